"""The model problems: the paper's XOR and binary addition, and a modern digits MLP.

``TaskSpec`` is a small picklable description (what the CLI and the worker processes pass
around); ``build_task(spec)`` turns it into a :class:`TrainingTask` and the MGRIT options of
the chosen solver:

* ``naive``: the finest learning rate on every level, full batch;
* ``1`` (Solver 1): ``alpha_l = min(growth**l alpha_b, alpha_max)``, full batch on every level
  (digits: the minibatch of the fine step the coarse step starts at);
* ``2`` (Solver 2, "serialized"): step ``i`` uses chunk ``i mod K`` of the training set on
  every level, ``i`` the level-local index, learning rates as Solver 1.  By default
  (``serial_index="stop"``) step ``i`` is the step that *produces* point ``i`` (what an XBraid
  step function computes from ``t_stop``); it reproduces the paper's Table 3 rho to 2 digits
  for N >= 400, while indexing by the starting point (``"start"``) converges faster than the
  paper (17 instead of 20 iterations for N >= 1600).

XOR (3-4-1, sigmoid, no biases, summed ``1/2 (y - out)^2``, plain gradient descent) starts from
the weights of the well-known 11-line NumPy example (``np.random.seed(1)``, then
``2*rand(3,4)-1`` and ``2*rand(4,1)-1``).  Binary addition (24-128-64-12 sigmoid, no biases)
leaves details open in the paper; ours, all options: a fixed training set of ``train_size``
pairs ``a, b < 2**11`` (default 50) drawn with ``numpy.random.default_rng(seed)``, bits most
significant first, target the 12-bit sum, loss ``1/2 sum (y - out)^2`` (``reduction="sum"``, or
``"mean"`` over the batch), weights ``0.2*randn - 0.1`` with ``np.random.seed(seed)``,
``alpha_b = 0.025``.  Solver 1 uses the whole set as one batch; Solver 2 chunks of ``batch``
(default 50).  With the paper's other setting (500 pairs per step, summed loss) the serial
run itself is erratic (``alpha_b = 0.1``: the summed gradient of 500 examples) and MGRIT
stops on divergence after 3-35 iterations; see the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from torchpint.training.errors import TrainingConfigError
from torchpint.training.optim import SGD, Adam
from torchpint.training.problem import TrainingTask
from torchpint.training.schedule import BatchSchedule
from torchpint.training.solver import MGRITOptions

TASKS = ("xor", "addition", "digits")
SOLVERS = ("naive", "1", "2")

XOR_INPUTS = [[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1]]
XOR_TARGETS = [0, 1, 1, 0]


class SigmoidNet(nn.Module):
    """``sigmoid(... sigmoid(x @ W0) @ W1 ...)``: the paper's networks (no biases)."""

    def __init__(self, weights: list[Tensor]) -> None:
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(w.clone()) for w in weights])

    def forward(self, x: Tensor) -> Tensor:
        for w in self.weights:
            x = torch.sigmoid(x @ w)
        return x


def half_sse(out: Tensor, target: Tensor) -> Tensor:
    """``1/2 sum (y - out)^2`` over the batch (the paper's loss)."""
    return 0.5 * ((target - out) ** 2).sum()


def half_mse(out: Tensor, target: Tensor) -> Tensor:
    """``1/2 sum (y - out)^2`` divided by the batch size."""
    return 0.5 * ((target - out) ** 2).sum() / out.shape[0]


def cross_entropy(out: Tensor, target: Tensor) -> Tensor:
    return nn.functional.cross_entropy(out, target)


@dataclass
class TaskSpec:
    """A model problem and its solver, picklable (see the module docstring)."""

    task: str = "xor"
    steps: int = 100
    solver: str = "1"
    alpha_b: float | None = None  # default per task: xor 1.0, addition 0.025, digits 0.05
    alpha_max: float = 8.0
    growth: float = 2.0
    cycle: str = "two-level"
    optimizer: str = "sgd"  # digits: sgd, momentum, adam
    momentum: float = 0.9
    batch: int | None = None  # Solver 2 chunk / digits minibatch (default: xor 1, addition 50, digits 64)
    train_size: int = 50  # addition: pairs in the training set (the paper: 500 or 50)
    reduction: str = "sum"  # addition: "sum" (the paper) or "mean"
    hidden: int = 32  # digits: hidden width
    coarse_data: str | None = None  # override the solver's choice
    coarse_update: str = "scaled"  # "scaled" (the paper) or "frozen"
    divergence_iters: int = 3
    serial_index: str = "stop"  # Solver 2: a step is indexed by the point it produces ("stop") or starts from
    seed: int = 0
    max_iter: int = 50
    tol: float | None = None
    max_memory: int | None = None
    store: str = "all"
    coarse_storage: str = "all"
    levels: int | None = None
    verbose: bool = False

    def resolved_alpha_b(self) -> float:
        if self.alpha_b is not None:
            return self.alpha_b
        return {"xor": 1.0, "addition": 0.025, "digits": 0.05}[self.task]

    def validate(self) -> None:
        if self.task not in TASKS:
            raise TrainingConfigError(f"unknown task {self.task!r}: use one of {', '.join(TASKS)}")
        if self.solver not in SOLVERS:
            raise TrainingConfigError(f"unknown solver {self.solver!r}: use naive, 1 or 2")
        if not isinstance(self.steps, int) or self.steps < 2:
            raise TrainingConfigError(f"training needs at least 2 steps (--steps N with N >= 2), got {self.steps}")
        a = self.resolved_alpha_b()
        if not (math.isfinite(a) and a > 0):
            raise TrainingConfigError(f"alpha_b must be > 0, got {a}")
        if not (self.alpha_max > 0):
            raise TrainingConfigError(f"alpha_max must be > 0, got {self.alpha_max}")
        if not (self.growth >= 1 and math.isfinite(self.growth)):
            raise TrainingConfigError(f"the growth factor must be >= 1, got {self.growth}")
        for name in ("batch", "levels"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise TrainingConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_size", "hidden", "max_iter", "divergence_iters"):
            if getattr(self, name) < 1:
                raise TrainingConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:  # numpy's seeds
            raise TrainingConfigError(f"seed must be in [0, 2**32), got {self.seed}")
        if not 0 <= self.momentum < 1:
            raise TrainingConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.tol is not None and not (self.tol >= 0 and math.isfinite(self.tol)):
            raise TrainingConfigError(f"tol must be a finite number >= 0, got {self.tol}")
        if self.reduction not in ("sum", "mean"):
            raise TrainingConfigError(f"reduction must be 'sum' or 'mean', got {self.reduction!r}")
        if self.optimizer not in ("sgd", "momentum", "adam"):
            raise TrainingConfigError(f"optimizer must be sgd, momentum or adam, got {self.optimizer!r}")
        if self.serial_index not in ("start", "stop"):
            raise TrainingConfigError(f"serial_index must be 'start' or 'stop', got {self.serial_index!r}")
        if self.task != "digits" and self.optimizer != "sgd":
            raise TrainingConfigError("the paper's problems use plain gradient descent (optimizer sgd)")


def xor_weights() -> list[Tensor]:
    rng = np.random.RandomState(1)  # the same stream as np.random.seed(1)
    syn0 = 2 * rng.random_sample((3, 4)) - 1
    syn1 = 2 * rng.random_sample((4, 1)) - 1
    return [torch.from_numpy(syn0), torch.from_numpy(syn1)]


def addition_data(n: int, seed: int, stream: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` pairs and their sums as bits; stream 0 is the training set, 1 the test set."""
    rng = np.random.default_rng(seed if stream == 0 else [seed, stream])
    a = rng.integers(0, 2**11, size=n)
    b = rng.integers(0, 2**11, size=n)
    bits = lambda v: ((v[:, None] >> np.arange(11, -1, -1)) & 1).astype(np.float64)
    x = np.concatenate([bits(a), bits(b)], axis=1)
    y = bits(a + b)
    return torch.from_numpy(x), torch.from_numpy(y)


def addition_weights(seed: int) -> list[Tensor]:
    rng = np.random.RandomState(seed)
    return [torch.from_numpy(0.2 * rng.standard_normal(shape) - 0.1) for shape in ((24, 128), (128, 64), (64, 12))]


def digits_model(hidden: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))


def digits_data(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from torchpint.data import load_digits

    data = load_digits(seed=seed)
    x, y = data.train.tensors
    xt, yt = data.test.tensors
    return x, y, xt, yt


def build_task(spec: TaskSpec) -> tuple[TrainingTask, MGRITOptions]:
    """The training task and the MGRIT options of ``spec``'s solver."""
    spec.validate()
    alpha_b = spec.resolved_alpha_b()
    serialized = spec.solver == "2"
    offset = 1 if spec.serial_index == "stop" else 0
    if spec.task == "xor":
        x = torch.tensor(XOR_INPUTS, dtype=torch.float64)
        y = torch.tensor(XOR_TARGETS, dtype=torch.float64).unsqueeze(1)
        model: nn.Module = SigmoidNet(xor_weights())
        loss = half_sse
        schedule = (BatchSchedule.serialized(x, y, spec.steps, spec.batch or 1, offset) if serialized
                    else BatchSchedule.full_batch(x, y, spec.steps))
        update: Any = SGD(lr=alpha_b)
        coarse = "serialized" if serialized else "same"
    elif spec.task == "addition":
        x, y = addition_data(spec.train_size, spec.seed)
        model = SigmoidNet(addition_weights(spec.seed))
        loss = half_sse if spec.reduction == "sum" else half_mse
        schedule = (BatchSchedule.serialized(x, y, spec.steps, spec.batch or 50, offset) if serialized
                    else BatchSchedule.full_batch(x, y, spec.steps))
        update = SGD(lr=alpha_b)
        coarse = "serialized" if serialized else "same"
    else:
        x, y, _, _ = digits_data(spec.seed)
        model = digits_model(spec.hidden, spec.seed)
        loss = cross_entropy
        batch = spec.batch or 64
        schedule = (BatchSchedule.serialized(x, y, spec.steps, batch, offset) if serialized
                    else BatchSchedule.from_loader(x, y, spec.steps, batch, seed=spec.seed))
        if spec.optimizer == "adam":
            update = Adam(lr=alpha_b)
        elif spec.optimizer == "momentum":
            update = SGD(lr=alpha_b, momentum=spec.momentum)
        else:
            update = SGD(lr=alpha_b)
        coarse = "serialized" if serialized else "same"
    task = TrainingTask(model, loss, schedule, update, dtype=torch.float64, name=spec.task)
    options = MGRITOptions(
        cycle=spec.cycle,
        growth=1.0 if spec.solver == "naive" else spec.growth,
        lr_max=math.inf if spec.solver == "naive" else spec.alpha_max,
        coarse_data=spec.coarse_data or coarse,
        coarse_update=spec.coarse_update,
        divergence_iters=spec.divergence_iters,
        max_iter=spec.max_iter,
        tol=spec.tol,
        max_memory=spec.max_memory,
        store=spec.store,
        coarse_storage=spec.coarse_storage,
        levels=spec.levels,
        verbose=spec.verbose,
    )
    options.validate()
    return task, options


ADDITION_TEST_PAIRS = 500


def test_set(spec: TaskSpec) -> tuple[Tensor, Tensor]:
    """The examples ``test_accuracy`` is measured on.

    * xor: the four inputs themselves: they are the whole input space, so there is no
      held-out set (the accuracy says whether the network learnt XOR);
    * addition: 500 pairs drawn like the training set from another random stream (pairs that
      also occur in the training set are possible; 2**22 pairs exist);
    * digits: the held-out split of the scikit-learn digits.
    """
    if spec.task == "xor":
        return torch.tensor(XOR_INPUTS, dtype=torch.float64), torch.tensor(XOR_TARGETS, dtype=torch.float64).unsqueeze(1)
    if spec.task == "addition":
        return addition_data(ADDITION_TEST_PAIRS, spec.seed, stream=1)
    _, _, xt, yt = digits_data(spec.seed)
    return xt, yt


def accuracy(task: TrainingTask, w: Tensor, x: Tensor, y: Tensor) -> float:
    """The fraction of examples right: the arg-max class for labels; every output bit on the right
    side of 1/2 for 0/1 targets (XOR's output, the 12 bits of a sum)."""
    out = task.forward(w, x.to(task.dtype))
    if y.is_floating_point():
        right = ((out > 0.5) == (y > 0.5)).all(dim=1)
    else:
        right = out.argmax(dim=1) == y
    return float(right.to(torch.float64).mean())


def evaluate(spec: TaskSpec, task: TrainingTask, w: Tensor) -> dict[str, float]:
    """``final_loss``: the training loss of ``w`` on the whole training set (the task's loss, the
    paper's ``1/2 sum (y - out)^2`` for xor and addition); ``test_accuracy`` on :func:`test_set`."""
    x, y = test_set(spec)
    return {"final_loss": task.loss(w), "test_accuracy": accuracy(task, w, x, y)}
