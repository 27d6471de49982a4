"""A user-defined problem in ten lines: a damped oscillator, solved with MGRIT and parareal.

    .venv/bin/python examples/engine_own_problem.py
"""

import torch

from torchpint import MGRIT, Parareal, time_grid
from torchpint.engine import BatchedProblem


class Oscillator(BatchedProblem):
    """x'' = -x - 0.1 x' as a first-order system; implicit midpoint rule; state (x, v)."""

    A = torch.tensor([[0.0, 1.0], [-1.0, -0.1]], dtype=torch.float64)

    def initial_value(self) -> torch.Tensor:
        return torch.tensor([1.0, 0.0], dtype=torch.float64)

    def step_batch(self, u: torch.Tensor, t_start: torch.Tensor, t_stop: torch.Tensor) -> torch.Tensor:
        # All intervals of a relaxation sweep in one call: a batch of 2x2 solves.
        h = (t_stop - t_start).to(torch.float64)[:, None, None]
        eye = torch.eye(2, dtype=torch.float64)
        lhs, rhs = eye - h / 2 * self.A, eye + h / 2 * self.A
        return torch.linalg.solve(lhs, (rhs @ u.unsqueeze(-1))).squeeze(-1)


if __name__ == "__main__":
    t = time_grid(0.0, 20.0, 1025)
    mgrit = MGRIT(Oscillator(), t, levels=4, cf=4, relax="FCF", cycle="F", tol=1e-10)
    result = mgrit.solve()
    print("MGRIT residuals:", " ".join(f"{r:.2e}" for r in result.residuals))
    print("u(20) =", result.u[-1].tolist())
    para = Parareal(Oscillator(), t, steps_per_slice=32, iterations=20, tol=1e-10).solve()
    print(f"parareal: {para.iterations} iterations, max difference to MGRIT {float((para.u - result.u).abs().max()):.2e}")
