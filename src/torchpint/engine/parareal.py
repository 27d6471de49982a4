"""Parareal: two-level MGRIT with F-relaxation and a coarse sweep as the initial guess.

With fine propagator ``F_j`` (``m`` fine steps over slice ``j``) and coarse propagator
``G_j`` (one step of a cheap problem over the same slice), the two-level FAS iteration with
F-relaxation and nested iteration *is* parareal:

    U_j^0 = G_j(U_{j-1}^0),   U_j^{k+1} = G_j(U_{j-1}^{k+1}) + F_j(U_{j-1}^k) - G_j(U_{j-1}^k).

So parareal shares the engine (serial, batched, or over torch.distributed) with MGRIT and
has its finite-termination property: after ``k`` iterations the first ``k`` slices are
exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from torchpint.engine.comm import Comm
from torchpint.engine.mgrit import MGRIT, ConfigError, IterationCallback
from torchpint.engine.problem import Problem
from torchpint.engine.result import SolveResult
from torchpint.engine.state import State


class Parareal:
    """Parareal over ``slices`` time slices of ``steps_per_slice`` fine steps each.

    Args:
        fine: the fine problem, stepped on the fine grid ``t``.
        coarse: the coarse problem (default: ``fine`` with one step per slice).
        t: the fine time grid; ``len(t) - 1`` must be a multiple of ``steps_per_slice``.
        steps_per_slice: fine steps per slice (the coarsening factor, >= 2).
        iterations: at most this many parareal iterations.
        tol: stop early when the residual at the slice boundaries is below this (0 = never).
    """

    def __init__(
        self,
        fine: Problem,
        t: torch.Tensor | Sequence[float],
        *,
        steps_per_slice: int,
        coarse: Problem | None = None,
        iterations: int = 10,
        tol: float = 0.0,
        comm: Comm | None = None,
        store: str = "all",
        gather: bool = True,
        callback: IterationCallback | None = None,
    ) -> None:
        if iterations < 1:
            raise ConfigError(f"iterations must be >= 1, got {iterations}")
        self._mgrit = MGRIT(
            [fine, coarse if coarse is not None else fine],
            t,
            levels=2,
            cf=steps_per_slice,
            relax="F",
            cycle="V",
            nested=True,
            tol=tol,
            max_iter=iterations,
            comm=comm,
            store=store,
            gather=gather,
            callback=callback,
        )

    def solve(self, u0: State | None = None) -> SolveResult:
        return self._mgrit.solve(u0)
