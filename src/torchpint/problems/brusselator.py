"""The Brusselator, a nonlinear oscillator: a test for the FAS (nonlinear) MGRIT.

    x' = A + x^2 y - (B + 1) x,    y' = B x - x^2 y

stepped with the classical fourth-order Runge-Kutta method.  The state is a float64 tensor
``(x, y)``; the batched step is the same arithmetic on a ``(batch, 2)`` tensor.  Defaults
follow PyMGRIT's example (A = 1, B = 3, (x, y)(0) = (0, 1)).
"""

from __future__ import annotations

import torch

from torchpint.engine.problem import BatchedProblem


class Brusselator(BatchedProblem):
    def __init__(self, A: float = 1.0, B: float = 3.0, x0: float = 0.0, y0: float = 1.0) -> None:
        self.A, self.B = float(A), float(B)
        self.x0, self.y0 = float(x0), float(y0)

    def initial_value(self) -> torch.Tensor:
        return torch.tensor([self.x0, self.y0], dtype=torch.float64)

    def _f(self, u: torch.Tensor) -> torch.Tensor:
        x, y = u[..., 0], u[..., 1]
        x2y = x * x * y
        return torch.stack([self.A + x2y - (self.B + 1) * x, self.B * x - x2y], dim=-1)

    def step_batch(self, u: torch.Tensor, t_start: torch.Tensor, t_stop: torch.Tensor) -> torch.Tensor:
        h = (t_stop - t_start).to(u.dtype).unsqueeze(-1)
        k1 = self._f(u)
        k2 = self._f(u + 0.5 * h * k1)
        k3 = self._f(u + 0.5 * h * k2)
        k4 = self._f(u + h * k3)
        return u + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
