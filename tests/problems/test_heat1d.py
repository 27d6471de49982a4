"""Heat1D's batched solve: the row-vectorised LDL^T kernel gives bitwise LAPACK pttrs's answer."""

import math

import pytest
import torch

from torchpint.engine import MGRIT, time_grid
from torchpint.problems import Heat1D, default_rhs

pytest.importorskip("numba")


def full_source(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Not separable: the kernel gets the (batch, n) array."""
    return torch.sin(math.pi * x + t) * torch.exp(-t)


@pytest.mark.parametrize("rhs", [default_rhs(0.7), full_source, None], ids=["separable", "full", "none"])
def test_rows_solver_is_bitwise_pttrs(rhs) -> None:
    fast = Heat1D(0.0, 2.0, 67, 0.7, rhs=rhs, solver="rows")
    lapack = Heat1D(0.0, 2.0, 67, 0.7, rhs=rhs, solver="lapack")
    g = torch.Generator().manual_seed(1)
    trajectory = torch.randn(2 * 19, 65, dtype=torch.float64, generator=g)
    u = trajectory[::2]  # a strided view, as the engine passes the points of one offset
    t0 = torch.linspace(0.0, 1.9, 19, dtype=torch.float64)
    t1 = t0 + 0.1
    t1[::4] += 0.05  # three step sizes in one batch: one factorisation each
    expected = lapack.step_batch(u, t0, t1)
    assert torch.equal(fast.step_batch(u, t0, t1), expected)
    # written straight into another strided view of the trajectory
    fast.step_batch_into(u, t0, t1, trajectory[1::2])
    assert torch.equal(trajectory[1::2], expected)
    # in place (every row is read before it is written) and a batch of one
    v = u.clone()
    fast.step_batch_into(v, t0, t1, v)
    assert torch.equal(v, expected)
    assert torch.equal(fast.step(u[3], float(t0[3]), float(t1[3])), expected[3])


def test_mgrit_history_identical_with_either_solver() -> None:
    histories = []
    for solver in ("rows", "lapack"):
        problem = Heat1D(0.0, 2.0, 33, 1.0, rhs=default_rhs(1.0), solver=solver)
        mgrit = MGRIT(problem, time_grid(0.0, 2.0, 65), levels=3, cf=4, nested=False, tol=1e-12, max_iter=6)
        result = mgrit.solve()
        histories.append((result.residuals, result.steps_per_level, result.u))
    assert histories[0][0] == histories[1][0]
    assert histories[0][1] == histories[1][1]
    assert torch.equal(histories[0][2], histories[1][2])


def test_unknown_solver_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown solver"):
        Heat1D(nx=9, solver="thomas")
