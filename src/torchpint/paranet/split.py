"""Where to cut the chain of blocks: per-block costs and a balanced contiguous split.

The parareal network's step takes as long as its slowest sub-network, so the
blocks are cut into ``N`` contiguous groups whose largest cost is as small as
possible (the linear-partition problem, solved exactly by dynamic
programming).  The cost of a block is its multiply-accumulates (``flops``),
its parameter count (``params``), its measured forward+backward time
(``time``) or 1 (``blocks``, equal counts).

With ``time`` the split minimizes the *modelled distributed step* instead
(:func:`model_step`, :func:`makespan_split`): forward and backward each wait
for their slowest rank, and the hub also runs the stem, the head and every
coarse network, so equal block costs are not the fastest split.
"""

from __future__ import annotations

import copy
import itertools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from torchpint.models.counting import count_flops, count_parameters

__all__ = [
    "BALANCE_MEASURES",
    "Balance",
    "PhaseCost",
    "StepModel",
    "balanced_split",
    "block_costs",
    "chain_phase_times",
    "check_split_points",
    "detect_stem_head",
    "makespan_split",
    "model_step",
    "module_placement",
]

BALANCE_MEASURES = ("flops", "params", "time", "blocks")


@dataclass(frozen=True)
class Balance:
    """How evenly a split shares a cost: per-group costs and max/mean (1.0 is perfect)."""

    measure: str
    group_costs: tuple[float, ...]

    @property
    def imbalance(self) -> float:
        """Largest group cost over the mean group cost."""
        mean = sum(self.group_costs) / len(self.group_costs)
        return max(self.group_costs) / mean if mean > 0 else 1.0

    @property
    def shares(self) -> tuple[float, ...]:
        """Each group's fraction of the total cost."""
        total = sum(self.group_costs)
        return tuple(c / total if total > 0 else 1.0 / len(self.group_costs) for c in self.group_costs)

    def as_dict(self) -> dict[str, object]:
        return {
            "measure": self.measure,
            "group_costs": list(self.group_costs),
            "shares": [round(s, 4) for s in self.shares],
            "imbalance": round(self.imbalance, 4),
        }


def module_placement(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating-point dtype of a module's first parameter (or buffer): where its inputs must be."""
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next((b for b in module.buffers() if b.is_floating_point()), None)
    if tensor is None:
        return torch.device("cpu"), torch.get_default_dtype()
    return tensor.device, tensor.dtype if tensor.is_floating_point() else torch.get_default_dtype()


def block_costs(
    blocks: Sequence[nn.Module],
    input_shapes: Sequence[tuple[int, ...]],
    measure: str = "flops",
    batch: int = 16,
    repeats: int = 3,
) -> list[float]:
    """Cost of each block by ``measure``; ``input_shapes[i]`` is block i's sample input shape.

    ``time`` runs forward and backward of a copy of each block (so that no
    batch-norm statistics move) on a random batch and takes the median of
    ``repeats`` runs after one warm-up.
    """
    if measure not in BALANCE_MEASURES:
        raise ValueError(f"unknown balance measure {measure!r}; use one of {', '.join(BALANCE_MEASURES)}")
    if measure == "blocks":
        return [1.0] * len(blocks)
    if measure == "params":
        return [float(count_parameters(b)) for b in blocks]
    if measure == "flops":
        return [float(count_flops(b, shape)) for b, shape in zip(blocks, input_shapes)]
    gen = torch.Generator().manual_seed(0)
    costs = []
    for block, shape in zip(blocks, input_shapes):
        probe = copy.deepcopy(block).train()
        device, dtype = module_placement(probe)
        x = torch.randn((batch, *shape), generator=gen).to(device, dtype).requires_grad_(True)
        samples = []
        for i in range(repeats + 1):
            start = time.perf_counter()
            probe(x).float().sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i > 0:
                samples.append(time.perf_counter() - start)
        costs.append(statistics.median(samples))
    return costs


class _Stamp(torch.autograd.Function):
    """Identity that records when the backward pass reaches it."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor, log: list[float]) -> torch.Tensor:  # type: ignore[override]
        ctx.log = log  # type: ignore[attr-defined]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        ctx.log.append(time.perf_counter())  # type: ignore[attr-defined]
        return grad, None


def chain_phase_times(
    modules: Sequence[nn.Module], input_shape: Sequence[int], batch: int = 16, repeats: int = 3
) -> tuple[list[float], list[float]]:
    """Forward and backward seconds of each module of the chain ``modules[-1](...modules[0](x))``, in context.

    The chain runs as a whole (copies of the modules, so no batch-norm
    statistic moves) on a random batch; forward times are taken between
    the calls, backward times from identity autograd functions placed
    between the modules.  In context matters: a block's cost alone, on a
    fresh input, can be a fifth off its cost inside the network (memory
    traffic, allocation), which is enough to pick the wrong split.  Each
    value is the fastest of ``repeats`` runs after one warm-up: other work
    on the machine only ever adds time, so the minimum is the steadiest
    estimate of the module's own cost.
    """
    chain = [copy.deepcopy(m).train() for m in modules]
    device, dtype = module_placement(nn.ModuleList(chain))
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn((batch, *input_shape), generator=gen).to(device, dtype)
    n = len(chain)
    best_fwd, best_bwd = [math.inf] * n, [math.inf] * n
    for i in range(repeats + 1):
        log: list[float] = []
        fwd: list[float] = []
        h = x0
        for m in chain:
            start = time.perf_counter()
            h = _Stamp.apply(m(h), log)
            fwd.append(time.perf_counter() - start)
        start = time.perf_counter()
        h.float().square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        end = time.perf_counter()
        # the backward pass reaches the stamps in reverse: log[k] is module n-1-k's output; module n-1-k's
        # backward runs from there to the next stamp (the previous module's output), the last to the end
        marks = [*log, end]
        bwd = [0.0] * n
        for k in range(n):
            bwd[n - 1 - k] = marks[k + 1] - marks[k]
        if i > 0:
            best_fwd = [min(a, b) for a, b in zip(best_fwd, fwd)]
            best_bwd = [min(a, b) for a, b in zip(best_bwd, bwd)]
    return best_fwd, best_bwd


@dataclass(frozen=True)
class PhaseCost:
    """Seconds of a module's forward and of its backward pass."""

    forward: float
    backward: float


#: the cost of the coarse network of the sub-network made of blocks ``a..b-1``
CoarseCost = Callable[[int, int], PhaseCost]
#: seconds to send the tensor that enters block ``i`` (``i = len(blocks)``: the last block's output)
LinkCost = Callable[[int], float]


@dataclass(frozen=True)
class StepModel:
    """Modelled training step of the distributed parareal network (K = 1) for one split.

    ``forward``: seconds from the input to the output on the hub;
    ``backward``: from the output to the hub's last gradient; ``busy``: the
    seconds each rank computes; ``original``: one worker's step on the
    original network (stem, blocks and head, no coarse networks).
    """

    bounds: tuple[int, ...]
    forward: float
    backward: float
    busy: tuple[float, ...]
    original: float

    @property
    def step(self) -> float:
        """The modelled step: forward and backward, each as long as its critical path."""
        return self.forward + self.backward

    @property
    def speedup(self) -> float:
        """Modelled speedup over the original network on one worker."""
        return self.original / self.step if self.step > 0 else 1.0

    def as_dict(self) -> dict[str, object]:
        return {
            "step_s": round(self.step, 6),
            "forward_s": round(self.forward, 6),
            "backward_s": round(self.backward, 6),
            "busy_s": [round(b, 6) for b in self.busy],
            "idle_shares": [round(1 - b / self.step, 4) if self.step > 0 else 0.0 for b in self.busy],
            "original_s": round(self.original, 6),
            "speedup": round(self.speedup, 4),
        }


def model_step(
    bounds: Sequence[int],
    forward: Sequence[float],
    backward: Sequence[float],
    stem: PhaseCost,
    head: PhaseCost,
    coarse: CoarseCost,
    link: LinkCost | None = None,
) -> StepModel:
    """The critical path of one training step of the hub/worker schedule with K = 1.

    It follows :func:`~torchpint.paranet.net.parareal_sweep` and the hub's
    autograd order (see :mod:`torchpint.paranet.distributed`): rank ``r``
    starts ``F_{r+1}`` when the stem and the coarse sweep ``C_1..C_r`` are
    done and sent; the hub then runs ``C_N(U^0_{N-1})``, ``F_1`` and the correction
    sweep, each ``C_{r+1}(U^1_r)`` followed by waiting for rank ``r``'s
    output, then the head.  Backward mirrors it: the hub sends each
    ``dL/dy`` as the correction sweep's backward reaches it (waiting for
    each message to arrive, as it waits for the inputs before ``F_1``), runs the
    coarse and ``F_1`` backward, then takes each ``dL/dU`` (waiting for
    rank ``r``) before the coarse sweep's backward and the stem's.  Each
    message between the hub and rank ``r`` costs ``link`` of its interface;
    the optimizer step is left out (it overlaps with the hub's next stem).
    """
    n = len(bounds) - 1
    send = link or (lambda i: 0.0)
    fine_f = [float(sum(forward[a:b])) for a, b in itertools.pairwise(bounds)]
    fine_b = [float(sum(backward[a:b])) for a, b in itertools.pairwise(bounds)]
    original = stem.forward + stem.backward + head.forward + head.backward + sum(fine_f) + sum(fine_b)
    c = [coarse(a, b) for a, b in itertools.pairwise(bounds)] if n > 1 else []
    # forward
    t = stem.forward
    start = [t]  # start[r]: when U^0_r is ready for rank r
    for r in range(n - 1):
        t += c[r].forward
        start.append(t + send(bounds[r + 1]))
    if n > 1:
        t += c[n - 1].forward  # C_N(U^0_{N-1}), while the inputs travel
    t = max([t, *start[1:]]) + fine_f[0]  # the inputs have arrived, then F_1
    for r in range(1, n):
        t = max(t + c[r].forward, start[r] + fine_f[r] + send(bounds[r + 1]))  # C_{r+1}(U^1_r), y_{r+1} from rank r
    t_forward = t + head.forward
    # backward, from the output's gradient
    t = head.backward
    sent = [0.0] * n  # sent[r]: when dL/dy reaches rank r
    for r in range(n - 1, 0, -1):
        sent[r] = t = t + send(bounds[r + 1])
        t += c[r].backward
    if n > 1:
        t += c[n - 1].backward
    t += fine_b[0]
    for r in range(n - 1, 0, -1):
        t = max(t, sent[r] + fine_b[r] + send(bounds[r])) + c[r - 1].backward  # dL/dU^0_r from rank r, then C_r
    t_backward = t + stem.backward
    # C_1..C_{N-1} (sweep) and C_N(U^0_{N-1}), then C_2..C_N again (corrections), forward and backward
    coarse_total = sum(x.forward + x.backward for x in (*c, *c[1:]))
    hub = stem.forward + stem.backward + head.forward + head.backward + fine_f[0] + fine_b[0] + coarse_total
    busy = (hub, *(f + b for f, b in zip(fine_f[1:], fine_b[1:])))
    return StepModel(tuple(int(b) for b in bounds), t_forward, t_backward, busy, original)


def makespan_split(
    forward: Sequence[float],
    backward: Sequence[float],
    groups: int,
    stem: PhaseCost,
    head: PhaseCost,
    coarse: CoarseCost,
    link: LinkCost | None = None,
) -> list[int]:
    """Bounds of ``groups`` contiguous groups minimizing :func:`model_step`'s modelled step.

    Forward and backward each wait for their slowest rank, and the hub also
    carries the stem, the head and every coarse network, so balancing the
    blocks' total cost is not enough.  Coordinate descent from the split
    that balances forward + backward time: each split point in turn moves
    to its best place between its neighbours, until none moves (exact for
    two groups; ties go to the smaller largest busy time).
    """
    total = [f + b for f, b in zip(forward, backward)]
    bounds = balanced_split(total, groups)

    def key(bs: list[int]) -> tuple[float, float]:
        m = model_step(bs, forward, backward, stem, head, coarse, link)
        return m.step, max(m.busy)

    best = key(bounds)
    moved = True
    while moved:
        moved = False
        for i in range(1, groups):
            for p in range(bounds[i - 1] + 1, bounds[i + 1]):
                trial = [*bounds[:i], p, *bounds[i + 1 :]]
                k = key(trial)
                if k < best:
                    best, bounds, moved = k, trial, True
    return bounds


def balanced_split(costs: Sequence[float], groups: int, first_offset: float = 0.0) -> list[int]:
    """Bounds ``[0, b_1, ..., len(costs)]`` of ``groups`` contiguous non-empty groups minimizing the largest sum.

    Exact dynamic programming, O(groups * n^2) vectorized.  Among optimal
    splits, ties are broken towards a lighter first group: in distributed
    mode that group runs on the hub, which also runs the stem, the coarse
    networks and the head.  ``first_offset`` is added to the first group's
    cost (that extra work of the hub), so the first group gets fewer blocks.
    """
    n = len(costs)
    if groups < 1:
        raise ValueError(f"number of sub-networks must be >= 1, got {groups}")
    if groups > n:
        raise ValueError(f"cannot split {n} blocks into {groups} sub-networks: at most {n}")
    c = np.asarray(costs, dtype=np.float64)
    prefix = np.concatenate([[0.0], np.cumsum(c)])
    seg = prefix[None, :] - prefix[:, None]  # seg[m, i] = cost of blocks m..i-1
    valid = np.triu(np.ones((n + 1, n + 1), dtype=bool), k=1)
    # 1) the smallest possible largest group cost T
    best = np.where(np.arange(n + 1) > 0, prefix + first_offset, np.inf)
    for _ in range(2, groups + 1):
        best = np.min(np.where(valid, np.maximum(best[:, None], seg), np.inf), axis=0)
    limit = best[n] * (1 + 1e-9) + 1e-12
    # 2) among splits with every group <= T, the most even one (least sum of squares),
    #    the first group weighted a hair more so that ties leave it lighter
    allowed = valid & (seg <= limit)
    allowed[0] = valid[0] & (seg[0] + first_offset <= limit)
    cost = np.where(allowed[0], (seg[0] + first_offset) ** 2 * (1 + 1e-6), np.inf)
    choice = np.zeros((groups + 1, n + 1), dtype=np.int64)
    for g in range(2, groups + 1):
        cand = np.where(allowed, cost[:, None] + seg**2, np.inf)
        choice[g] = np.argmin(cand, axis=0)
        cost = cand[choice[g], np.arange(n + 1)]
    bounds = [n]
    i = n
    for g in range(groups, 1, -1):
        i = int(choice[g, i])
        bounds.append(i)
    bounds.append(0)
    return bounds[::-1]


def check_split_points(
    split_points: Sequence[int], num_blocks: int, offset: int = 0, unit: str = "block"
) -> list[int]:
    """Validate interior cut points and return the block bounds ``[0, *points - offset, num_blocks]``.

    ``split_points`` are numbered as the caller numbers them: block indices (``offset`` 0), or
    layer indices of an ``nn.Sequential`` whose first ``offset`` layers are the stem.  The error
    quotes them, and the valid range, in that numbering.
    """
    given = [int(p) for p in split_points]
    bounds = [0, *(p - offset for p in given), num_blocks]
    if any(b >= a for a, b in zip(bounds[1:], bounds[:-1])):
        where = "" if offset == 0 and unit == "block" else (
            f" ({unit} indices; the blocks are {unit}s {offset}..{offset + num_blocks - 1})")
        raise ValueError(
            f"split points must be strictly increasing and inside {offset + 1}..{offset + num_blocks - 1}{where}, "
            f"so that every sub-network has at least one {unit}; got {given}"
        )
    return bounds


#: layers that act element by element (or per channel) and keep the shape: they join the stem or
#: head next to them rather than become blocks of their own
_POINTWISE = (
    nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm,
    nn.modules.dropout._DropoutNd, nn.Identity,
)


def _pointwise(layer: nn.Module) -> bool:
    activation = type(layer).__module__ == "torch.nn.modules.activation" and not isinstance(layer, nn.MultiheadAttention)
    return activation or isinstance(layer, _POINTWISE)


def detect_stem_head(layers: Sequence[nn.Module], shapes: Sequence[tuple[int, ...]]) -> tuple[int, int]:
    """Numbers of leading (stem) and trailing (head) layers of a plain chain; ``shapes[i]`` enters layer i.

    A user's ``nn.Sequential`` CNN usually opens with a convolution that changes the channel count
    and closes with pooling, flattening and a Linear classifier.  Torn as blocks, those put an
    interface (and a coarse network) where the shape changes: a coarse network from the image to
    the logits is most of the network's parameters.  So:

    * stem: the layers up to the first one that changes the sample shape, with the pointwise layers
      (normalisation, activation, dropout) right after it;
    * head: from the first layer after the stem whose output is *reduced* (fewer dimensions, or
      every spatial size 1 where the trunk has more), with the pointwise layers right before it; for
      a chain of vectors (an MLP), the last layer if it changes the width.

    ``shapes`` has ``len(layers) + 1`` entries (the input, then every layer's output).
    """
    n = len(layers)
    changes = [tuple(shapes[i]) != tuple(shapes[i + 1]) for i in range(n)]
    stem = 0
    if any(changes):
        stem = changes.index(True) + 1
        while stem < n and not changes[stem] and _pointwise(layers[stem]):
            stem += 1
    trunk = tuple(shapes[stem])

    def reduced(shape: tuple[int, ...]) -> bool:
        if len(shape) < len(trunk):
            return True
        return len(trunk) > 1 and len(shape) == len(trunk) and all(s == 1 for s in shape[1:]) and any(
            s > 1 for s in trunk[1:])

    head_start = n
    if len(trunk) > 1:
        head_start = next((i for i in range(stem, n) if reduced(tuple(shapes[i + 1]))), n)
    elif n > stem and changes[n - 1]:
        head_start = n - 1
    while head_start > stem and head_start < n and _pointwise(layers[head_start - 1]):
        head_start -= 1
    return stem, n - head_start


def group_costs(costs: Sequence[float], bounds: Sequence[int]) -> tuple[float, ...]:
    """Sum of ``costs`` over each group ``bounds[j]..bounds[j+1]-1``."""
    return tuple(float(sum(costs[a:b])) for a, b in itertools.pairwise(bounds))
