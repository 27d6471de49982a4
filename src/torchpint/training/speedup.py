"""How much parallel speed MGRIT over training steps buys.

Two models:

* the paper's *potential speedup* (Schroder 2017, Sec. 4): count the sequential ``Phi``
  applications of one iteration with as many processes as there are steps; level 0 costs 7,
  each intermediate level 8, the coarsest about 10:

      sigma_V = iters * (17 + 8 (L - 2)),  sigma_F = iters * sum_{j=2..L} (17 + 8 (j - 2)),

  speedup ``N / sigma``.  For the two-level solver the coarsest level is the whole coarse
  grid, solved serially, so we count ``iters * (7 + N/m)`` (our reading: the paper's
  ``17 = 7 + 10`` with the coarsest level's actual length);
* a *calibrated wall-clock model* for ``P`` processes: every batched ``Phi`` call that a
  one-process solve made (recorded per level) costs ``c(ceil(b / P))`` seconds, with ``c(b)``
  the measured time of one batched step of ``b`` weight vectors; serial training costs ``N``
  single steps.  It ignores communication and load imbalance, so it is a lower bound on time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from torchpint.engine.state import expand
from torchpint.training.problem import LevelProblem, TrainingTask


def level_steps(n_steps: int, levels: int, m: int = 2) -> list[int]:
    """Steps on every level (a level's last C-interval may be partial, as in XBraid)."""
    sizes = [n_steps]
    for _ in range(levels - 1):
        sizes.append(sizes[-1] // m)
    return sizes


def count_levels(n_steps: int, cycle: str, m: int = 2, max_coarse: int = 10) -> int:
    """Two-level: 2; V/F: coarsen by ``m`` until the coarsest level has at most ``max_coarse`` steps."""
    if cycle == "two-level":
        return 2 if n_steps >= m else 1
    levels, n = 1, n_steps
    while n > max_coarse and n // m >= 1:
        n //= m
        levels += 1
    return levels


def sequential_cost(iterations: int, cycle: str, levels: int, n_steps: int, m: int = 2) -> int:
    """``sigma``: sequential Phi applications of the whole solve (the paper's count)."""
    if levels <= 1:
        return n_steps
    if cycle == "two-level":
        return iterations * (7 + n_steps // m)
    if cycle == "V":
        return iterations * (17 + 8 * (levels - 2))
    if cycle == "F":
        return iterations * sum(17 + 8 * (j - 2) for j in range(2, levels + 1))
    raise ValueError(f"unknown cycle {cycle!r}")


def potential_speedup(n_steps: int, iterations: int, cycle: str, levels: int, m: int = 2) -> float:
    """The paper's ``N / sigma`` (enough processes, every ``Phi`` of unit cost, no communication)."""
    return n_steps / sequential_cost(iterations, cycle, levels, n_steps, m)


@dataclass
class StepCost:
    """Measured seconds of one batched step of ``b`` weight vectors (interpolated in ``b``)."""

    sizes: list[int]
    seconds: list[float]
    single: float  # one unbatched step (what serial training pays per step)

    def __call__(self, b: int) -> float:
        xs, ys = self.sizes, self.seconds
        if b <= xs[0]:
            return ys[0]
        for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
            if b <= x1:
                return y0 + (y1 - y0) * (b - x0) / (x1 - x0)
        return ys[-1] * b / xs[-1]

    def as_dict(self) -> dict[str, object]:
        return {"sizes": self.sizes, "seconds": self.seconds, "single": self.single}


def _best_time(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def calibrate(task: TrainingTask, max_batch: int, repeats: int = 3, chunk: int | None = None) -> StepCost:
    """Time one step of ``b`` weight vectors for ``b = 1, 2, 4, ..., max_batch`` on the finest level."""
    problem = LevelProblem(task, 0, task.update.lr, check_finite=True, chunk=chunk)
    state = task.initial_state()
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 4
    sizes.append(max(max_batch, 1))
    seconds = []
    for b in sizes:
        u = expand(state, b)
        t0 = torch.arange(b, dtype=torch.float64) % task.steps
        t1 = t0 + 1
        problem.step_batch(u, t0, t1)  # warm-up
        seconds.append(_best_time(lambda u=u, t0=t0, t1=t1: problem.step_batch(u, t0, t1), repeats))
    problem.step(state, 0.0, 1.0)
    single = _best_time(lambda: [problem.step(state, float(i), float(i + 1)) for i in range(8)], repeats) / 8
    return StepCost(sizes, seconds, single)


def predict_seconds(calls: Mapping[int, Sequence[int]], cost: StepCost, nproc: int) -> float:
    """Critical-path seconds of the recorded batched calls with ``nproc`` processes."""
    return sum(cost(max(1, -(-b // nproc))) for sizes in calls.values() for b in sizes)
