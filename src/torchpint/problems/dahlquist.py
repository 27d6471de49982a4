"""Dahlquist's test equation ``u' = lambda u`` (as PyMGRIT's ``Dahlquist``)."""

from __future__ import annotations

import torch

METHODS = ("BE", "FE", "TR")


class Dahlquist:
    """``u' = lambda u`` with backward Euler, forward Euler or the trapezoidal rule.

    The state is a float64 tensor of shape ``(1,)``; every step is an amplification by a
    factor that depends only on ``z = lambda * dt``, so the batched step is one product.
    """

    def __init__(self, lam: float = -1.0, u0: float = 1.0, method: str = "BE") -> None:
        method = method.upper()
        if method not in METHODS:
            raise ValueError(f"unknown Dahlquist method {method!r}: use one of {', '.join(METHODS)}")
        self.lam = float(lam)
        self.u0 = float(u0)
        self.method = method

    def initial_value(self) -> torch.Tensor:
        return torch.tensor([self.u0], dtype=torch.float64)

    def _factor(self, dt: torch.Tensor) -> torch.Tensor:
        z = dt * self.lam
        if self.method == "BE":
            return 1 / (1 - z)
        if self.method == "FE":
            return 1 + z
        return (1 + z / 2) / (1 - z / 2)

    def step(self, u: torch.Tensor, t_start: float, t_stop: float) -> torch.Tensor:
        return self._factor(torch.tensor(t_stop - t_start, dtype=torch.float64)) * u

    def step_batch(self, u: torch.Tensor, t_start: torch.Tensor, t_stop: torch.Tensor) -> torch.Tensor:
        return self._factor(t_stop - t_start).unsqueeze(-1) * u
