"""What a solve returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from torchpint.engine.state import State


@dataclass
class SolveResult:
    """The outcome of a parallel-in-time solve.

    ``u`` holds the solution stacked along a leading time axis at the times ``t``: every
    point, or only the C-points of the finest level (``store="c"``); gathered from all ranks
    (``gather=True``, the default) or just this rank's block.
    """

    t: torch.Tensor
    u: State
    residuals: list[float]  # space-time residual 2-norm after each iteration
    iterations: int
    converged: bool
    setup_seconds: float
    solve_seconds: float
    phase_seconds: dict[str, float] = field(default_factory=dict)
    steps_per_level: list[int] = field(default_factory=list)  # Phi applications on this rank
    states_per_level: list[int] = field(default_factory=list)  # states held on this rank (u and g)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def convergence_factors(self) -> list[float]:
        """``||r_k|| / ||r_{k-1}||`` for ``k >= 2`` (one fewer than the residuals)."""
        return [
            b / a if a > 0 else math.nan for a, b in zip(self.residuals[:-1], self.residuals[1:])
        ]

    @property
    def mean_convergence_factor(self) -> float:
        """``(||r_k|| / ||r_1||)^(1/(k-1))``: the average contraction per iteration."""
        r = self.residuals
        if len(r) < 2 or r[0] <= 0 or r[-1] <= 0:
            return math.nan
        return (r[-1] / r[0]) ** (1.0 / (len(r) - 1))

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (no tensors)."""
        return {
            "residuals": self.residuals,
            "convergence_factors": self.convergence_factors,
            "iterations": self.iterations,
            "converged": self.converged,
            "seconds": self.solve_seconds,
            "setup_seconds": self.setup_seconds,
            "phase_seconds": self.phase_seconds,
            "steps_per_level": self.steps_per_level,
            "states_per_level": self.states_per_level,
            "options": self.options,
        }
