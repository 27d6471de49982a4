"""Where to cut the chain of blocks: per-block costs and a balanced contiguous split.

The parareal network's step takes as long as its slowest sub-network, so the
blocks are cut into ``N`` contiguous groups whose largest cost is as small as
possible (the linear-partition problem, solved exactly by dynamic
programming).  The cost of a block is its multiply-accumulates (``flops``),
its parameter count (``params``), its measured forward+backward time
(``time``) or 1 (``blocks``, equal counts).
"""

from __future__ import annotations

import copy
import itertools
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from torchpint.models.counting import count_flops, count_parameters

__all__ = ["BALANCE_MEASURES", "Balance", "balanced_split", "block_costs", "chain_times", "check_split_points"]

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
        param = next(probe.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x = torch.randn((batch, *shape), generator=gen).to(device).requires_grad_(True)
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


def chain_times(
    modules: Sequence[nn.Module], input_shape: Sequence[int], batch: int = 16, repeats: int = 3
) -> list[float]:
    """Forward + backward seconds of each module of the chain ``modules[-1](...modules[0](x))``, in context.

    The chain runs as a whole (copies of the modules, so no batch-norm
    statistic moves) on a random batch; forward times are taken between
    the calls, backward times from identity autograd functions placed
    between the modules.  In context matters: a block's cost alone, on a
    fresh input, can be a fifth off its cost inside the network (memory
    traffic, allocation), which is enough to pick the wrong split.
    Median of ``repeats`` runs after one warm-up.
    """
    chain = [copy.deepcopy(m).train() for m in modules]
    param = next((p for m in chain for p in m.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn((batch, *input_shape), generator=gen).to(device)
    runs: list[list[float]] = []
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
        # log[0] is reached first (after the loss), log[i] when module n-1-i+1... see below
        marks = [start, *log]  # marks[i]: backward reached the output of module n-1-(i-1)
        n = len(chain)
        bwd = [0.0] * n
        for k in range(n):  # module n-1-k: from its output's stamp to the previous module's stamp (or the end)
            begin = marks[k + 1]
            finish = marks[k + 2] if k + 2 < len(marks) else end
            bwd[n - 1 - k] = finish - begin
        if i > 0:
            runs.append([f + b for f, b in zip(fwd, bwd)])
    return [statistics.median(r[j] for r in runs) for j in range(len(chain))]


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


def check_split_points(split_points: Sequence[int], num_blocks: int) -> list[int]:
    """Validate interior cut points and return the bounds ``[0, *split_points, num_blocks]``."""
    points = [int(p) for p in split_points]
    bounds = [0, *points, num_blocks]
    if any(b >= a for a, b in zip(bounds[1:], bounds[:-1])) or points and (points[0] <= 0 or points[-1] >= num_blocks):
        raise ValueError(
            f"split points must be strictly increasing and inside 1..{num_blocks - 1} "
            f"(so that every sub-network has at least one block), got {points}"
        )
    return bounds


def group_costs(costs: Sequence[float], bounds: Sequence[int]) -> tuple[float, ...]:
    """Sum of ``costs`` over each group ``bounds[j]..bounds[j+1]-1``."""
    return tuple(float(sum(costs[a:b])) for a, b in itertools.pairwise(bounds))
