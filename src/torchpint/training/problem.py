"""Training as time stepping: one deterministic update per step, batched with ``torch.func``.

``TrainingTask`` is what the user describes: any ``nn.Module``, a loss, a deterministic batch
schedule and an update rule (:mod:`torchpint.training.optim`).  The state of a time point is
the flat weight vector (plus momentum buffers / Adam moments and step count), and

    state_{i+1} = Phi_i(state_i) = update(state_i, grad_w loss(model(w_i; x_i), y_i))

with ``(x_i, y_i)`` the batch the schedule assigns to step ``i``.

``LevelProblem`` is ``Phi`` on one MGRIT level; it implements the engine's contract
(``step`` and ``step_batch``).  Time is the training-step index on the finest level, so a
level-``l`` step goes from ``t_start = s`` to ``t_stop = s + m**l`` and its level-local index is
``s / m**l``.  The batched step evaluates the gradients of *all* the given weight vectors in
one ``vmap(grad(functional_call(...)))`` call, each with its own batch: that is what lets one
process relax every C-interval of a level at once.

Coarse levels (``l >= 1``) take one step of the same update with the learning rate
``min(growth**l * lr, lr_max)`` and data chosen by ``data``:

* ``"same"``: the batch of the fine step the coarse step starts at (for a full-batch
  schedule, the whole set; the paper's Solver 1 and naive solver);
* ``"serialized"``: batch ``(i + offset) mod K`` with ``i`` the level-local index of the point
  the step starts from (the paper's Solver 2; ``offset = 1`` indexes a step by the point it
  produces, see :meth:`BatchSchedule.serialized`);
* ``"union"``: the union of the batches of the ``m**l`` fine steps it stands for (``m**l``
  times the gradient work per coarse step; still one batched call);
* ``"full"``: the whole training set.

and, with ``coarse_update``:

* ``"scaled"`` (the paper): one update with the level's learning rate;
* ``"frozen"``: the ``m**l`` fine updates the coarse step stands for, with the fine learning
  rate and the loss gradient frozen at the coarse step's start (one gradient, as ``"scaled"``;
  closed form for SGD and heavy-ball momentum, an elementwise loop for Adam).  For plain SGD it
  is ``alpha_l = 2**l alpha_b`` without a cap; for momentum and Adam it carries the optimizer
  state across the coarse step as ``m**l`` fine steps would (``lr_max`` caps the number of
  frozen steps at ``lr_max / lr``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from torchpint.engine.state import leaves, stack, take, tree_map
from torchpint.training.errors import NonFiniteWeightsError, TrainingConfigError
from torchpint.training.optim import UpdateRule
from torchpint.training.schedule import BatchSchedule

COARSE_DATA = ("same", "serialized", "union", "full")
COARSE_UPDATES = ("scaled", "frozen")


@dataclass
class Monitor:
    """Shared by the level problems of one solve: the current iteration, and every batched call."""

    iteration: int = -1  # -1: not in a solve (serial training), 0: the initial residual, k: iteration k
    calls: dict[int, list[int]] = field(default_factory=dict)  # level -> batch size of every call
    record: bool = True

    def log(self, level: int, size: int) -> None:
        if self.record:
            self.calls.setdefault(level, []).append(size)


class TrainingTask:
    """A deterministic training run: model, loss, batch schedule, update rule.

    Args:
        model: any ``nn.Module`` (its parameters are the weights; buffers are constants,
            so the model should not update buffers or draw random numbers in ``forward``).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` for one batch (as in a serial loop).
        schedule: which examples every step uses (:class:`BatchSchedule`).
        update: :class:`~torchpint.training.optim.SGD` or :class:`~torchpint.training.optim.Adam`.
        dtype: the dtype of the weights and of the MGRIT state (float64 by default, so that
            the tolerance ``1e-9 sqrt(N)`` is reachable); ``None`` keeps the model's dtype.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        schedule: BatchSchedule,
        update: UpdateRule,
        *,
        dtype: torch.dtype | None = torch.float64,
        name: str = "training",
    ) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise TrainingConfigError("the model has no trainable parameters")
        self.model = copy.deepcopy(model)
        if dtype is not None:
            self.model = self.model.to(dtype)
        dtypes = {p.dtype for p in self.model.parameters() if p.requires_grad}
        if len(dtypes) != 1:
            raise TrainingConfigError(f"all trainable parameters must share one dtype, got {sorted(map(str, dtypes))}")
        self.dtype = dtypes.pop()
        self.loss_fn = loss_fn
        self.schedule = schedule.to(self.dtype)
        self.update = update
        self.name = name
        self.names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        named = dict(self.model.named_parameters())
        self.shapes = [tuple(named[n].shape) for n in self.names]
        self.numels = [named[n].numel() for n in self.names]
        self.buffers = {n: b for n, b in self.model.named_buffers()}
        self._grad_fn: Callable[..., Tensor] | None = None

    def __getstate__(self) -> dict[str, Any]:  # the torch.func closures are rebuilt after pickling
        state = self.__dict__.copy()
        state["_grad_fn"] = None
        return state

    # ------------------------------------------------------------------ weights
    @property
    def steps(self) -> int:
        return self.schedule.steps

    @property
    def num_weights(self) -> int:
        return sum(self.numels)

    def initial_weights(self) -> Tensor:
        named = dict(self.model.named_parameters())
        return torch.cat([named[n].detach().reshape(-1) for n in self.names]).clone()

    def initial_state(self) -> Any:
        return self.update.init_state(self.initial_weights())

    def unflatten(self, w: Tensor) -> dict[str, Tensor]:
        return {n: p.view(s) for n, p, s in zip(self.names, w.split(self.numels), self.shapes)}

    def load_into(self, model: nn.Module, w: Tensor) -> nn.Module:
        """Copy the flat weights ``w`` into ``model``'s parameters (in place); returns it.

        Argument order, as in every torchpint helper that loads values into a model: the
        destination first, then what goes into it (``load_into(model, w)``; note that
        ``torch.nn.utils.vector_to_parameters(w, params)`` has the opposite order).
        """
        named = dict(model.named_parameters())
        with torch.no_grad():
            for n, p in self.unflatten(w).items():
                named[n].copy_(p.to(named[n].dtype))
        return model

    def forward(self, w: Tensor, x: Tensor) -> Tensor:
        """The model's output with flat weights ``w`` (no gradient)."""
        with torch.no_grad():
            return functional_call(self.model, {**self.unflatten(w.to(self.dtype)), **self.buffers}, (x,))

    def loss(self, w: Tensor) -> float:
        """The loss of the flat weights ``w`` on the whole training set (no gradient)."""
        with torch.no_grad():
            return float(self._loss(w.to(self.dtype), self.schedule.inputs, self.schedule.targets))

    # ------------------------------------------------------------------ gradients
    def _loss(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(self.model, {**self.unflatten(w), **self.buffers}, (x,))
        return self.loss_fn(out, y)

    @property
    def grad_fn(self) -> Callable[..., Tensor]:
        if self._grad_fn is None:
            self._grad_fn = grad(self._loss)
        return self._grad_fn

    def grad_one(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """The gradient for one weight vector, by plain autograd (cheaper per call than torch.func)."""
        with torch.enable_grad():
            leaf = w.detach().requires_grad_(True)
            return torch.autograd.grad(self._loss(leaf, x, y), leaf)[0]

    def grads(self, w: Tensor, x: Tensor | None, y: Tensor | None, shared: bool) -> Tensor:
        """Gradients of a stack of weight vectors ``w`` (S, P); data shared, or one batch per row.

        One weight vector (the serial steps of a coarsest level, serial training) goes through
        plain autograd; several through ``vmap(grad(...))`` in one call.
        """
        if w.shape[0] == 1:
            if shared:
                return self.grad_one(w[0], self.schedule.inputs, self.schedule.targets).unsqueeze(0)
            assert x is not None and y is not None
            return self.grad_one(w[0], x[0], y[0]).unsqueeze(0)
        if shared:
            return vmap(self.grad_fn, in_dims=(0, None, None))(w, self.schedule.inputs, self.schedule.targets)
        return vmap(self.grad_fn, in_dims=(0, 0, 0))(w, x, y)

    def activation_numel(self) -> int:
        """Elements of the module outputs of one forward pass on the largest batch (for memory estimates)."""
        total = 0

        def hook(_module: nn.Module, _inp: Any, out: Any) -> None:
            nonlocal total
            if isinstance(out, Tensor):
                total += out.numel()

        handles = [m.register_forward_hook(hook) for m in self.model.modules()]
        try:
            x = self.schedule.inputs[: self.schedule.max_batch]
            with torch.no_grad():
                self.model(x)
        finally:
            for h in handles:
                h.remove()
        return total


def level_learning_rate(lr: float, level: int, growth: float, lr_max: float) -> float:
    """``alpha_l = min(growth**l * alpha_b, alpha_max)``; the finest level keeps ``alpha_b``."""
    if level == 0:
        return lr
    return min(growth**level * lr, lr_max)


class LevelProblem:
    """``Phi`` on one level: one update step per time step (the engine's Problem contract)."""

    def __init__(
        self,
        task: TrainingTask,
        level: int,
        lr: float,
        data: str = "same",
        *,
        monitor: Monitor | None = None,
        check_finite: bool = True,
        chunk: int | None = None,
        coarse_update: str = "scaled",
        frozen_cap: int | None = None,
    ) -> None:
        if data not in COARSE_DATA:
            raise TrainingConfigError(f"coarse data must be one of {', '.join(COARSE_DATA)}, got {data!r}")
        if not (math.isfinite(lr) and lr > 0):
            raise TrainingConfigError(f"level {level}: the learning rate must be > 0, got {lr}")
        self.task = task
        self.level = level
        self.lr = lr
        self.data = "same" if level == 0 else data
        self.monitor = monitor if monitor is not None else Monitor(record=False)
        self.check_finite = check_finite
        self.chunk = chunk
        if coarse_update not in COARSE_UPDATES:
            raise TrainingConfigError(f"coarse update must be one of {', '.join(COARSE_UPDATES)}, got {coarse_update!r}")
        self.coarse_update = "scaled" if level == 0 else coarse_update
        self.frozen_cap = frozen_cap
        sched = task.schedule
        self._uniform = sched.sizes is None or bool((sched.sizes == sched.sizes[0]).all())

    # ------------------------------------------------------------------ contract
    def step(self, u: Any, t_start: float, t_stop: float) -> Any:
        t0 = torch.tensor([t_start], dtype=torch.float64)
        t1 = torch.tensor([t_stop], dtype=torch.float64)
        return take(self.step_batch(stack([u]), t0, t1), 0)

    def step_batch(self, u: Any, t_start: Tensor, t_stop: Tensor) -> Any:
        s = torch.round(t_start).to(torch.int64)
        h = torch.round(t_stop - t_start).to(torch.int64)
        size = int(s.numel())
        self.monitor.log(self.level, size)
        chunk = self.chunk or size
        if size <= chunk:
            return self._step(u, s, h)
        parts = [self._step(take(u, slice(a, a + chunk)), s[a : a + chunk], h[a : a + chunk]) for a in range(0, size, chunk)]
        return tree_map(lambda *xs: torch.cat(xs), *parts)

    # ------------------------------------------------------------------ internals
    def _step(self, u: Any, s: Tensor, h: Tensor) -> Any:
        task = self.task
        update = task.update
        w = update.weights(u)
        g = self._grads(w, s, h)
        fine_steps = int(h[0])
        if self.coarse_update == "frozen" and fine_steps > 1:
            k = fine_steps if self.frozen_cap is None else max(1, min(fine_steps, self.frozen_cap))
            out = update.apply_frozen(u, g, self.lr, k, first=(s == 0))
            if k < fine_steps and update.stateful and isinstance(out, dict) and "step" in out:
                out["step"] = out["step"] + float(fine_steps - k)  # keep the step count of the fine point
        else:
            out = update.apply(u, g, self.lr, fine_steps, first=(s == 0))
        if self.check_finite:
            self._check(update.weights(out), s, h)
        return out

    def _batch_ids(self, s: Tensor, h: Tensor) -> Tensor:
        sched = self.task.schedule
        assert sched.order is not None
        if self.data == "serialized":
            return (torch.div(s, h, rounding_mode="floor") + sched.offset) % sched.num_batches
        return sched.order[s.clamp(max=sched.steps - 1)]

    def _grads(self, w: Tensor, s: Tensor, h: Tensor) -> Tensor:
        task, sched = self.task, self.task.schedule
        if sched.is_full_batch or self.data == "full":
            return task.grads(w, None, None, shared=True)
        assert sched.batches is not None and sched.sizes is not None and sched.order is not None
        if self.data == "union" and int(h[0]) > 1:
            span = int(h[0])
            steps = (s.unsqueeze(1) + torch.arange(span)).clamp(max=sched.steps - 1)  # (S, span)
            ids = sched.order[steps]
            if self._uniform:
                idx = sched.batches[ids].reshape(len(s), -1)
                return task.grads(w, sched.inputs[idx], sched.targets[idx], shared=False)
            out = torch.empty_like(w)
            for k in range(len(s)):  # ragged batches: one state at a time
                idx = torch.cat([sched.batches[b, : int(sched.sizes[b])] for b in ids[k].tolist()]).unsqueeze(0)
                out[k] = task.grads(w[k : k + 1], sched.inputs[idx], sched.targets[idx], shared=False)[0]
            return out
        ids = self._batch_ids(s, h)
        if self._uniform:
            idx = sched.batches[ids]
            return task.grads(w, sched.inputs[idx], sched.targets[idx], shared=False)
        sizes = sched.sizes[ids]
        out = torch.empty_like(w)
        for size in torch.unique(sizes).tolist():
            rows = (sizes == size).nonzero().squeeze(1)
            idx = sched.batches[ids[rows], :size]
            out[rows] = task.grads(w[rows], sched.inputs[idx], sched.targets[idx], shared=False)
        return out

    def _check(self, w: Tensor, s: Tensor, h: Tensor) -> None:
        finite = torch.isfinite(w).all(dim=-1)
        if bool(finite.all()):
            return
        k = int((~finite).nonzero()[0, 0])
        start, span = int(s[k]), int(h[k])
        it = self.monitor.iteration
        when = f" in MGRIT iteration {it}" if it > 0 else (" (initial residual, before iteration 1)" if it == 0 else "")
        if self.level == 0:
            where = f"training step {start} -> {start + 1} (weights w_{start + 1})"
        else:
            where = (f"the level-{self.level} coarse step {start} -> {start + span} "
                     f"(learning rate {self.lr:g})")
        raise NonFiniteWeightsError(f"NaN/Inf weights at {where}{when}; stopped", step=start + 1, level=self.level)


def _tree_bytes(state: Any) -> int:
    return sum(leaf.numel() * leaf.element_size() for leaf in leaves(state))


def state_bytes(task: TrainingTask) -> int:
    """Bytes of one state (weights plus optimizer state)."""
    return _tree_bytes(task.initial_state())
