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
    # one step size for a batch of full tiles and a partial one
    many = torch.randn(37, 65, dtype=torch.float64, generator=g)
    s0 = torch.linspace(0.0, 1.8, 37, dtype=torch.float64)
    assert torch.equal(fast.step_batch(many, s0, s0 + 0.05), lapack.step_batch(many, s0, s0 + 0.05))
    # the engine's g added as the solution is written: bitwise a step and then add_ (strided g,
    # several step sizes, full and partial tiles; the LAPACK path adds it afterwards)
    rhs_g = torch.randn(2 * 19, 65, dtype=torch.float64, generator=g)[1::2]
    for problem in (fast, lapack):
        into = torch.empty(19, 65, dtype=torch.float64)
        problem.step_batch_into(u, t0, t1, into, g=rhs_g)
        assert torch.equal(into, expected + rhs_g)
    big_g = torch.randn(37, 65, dtype=torch.float64, generator=g)
    into = torch.empty(37, 65, dtype=torch.float64)
    fast.step_batch_into(many, s0, s0 + 0.05, into, g=big_g)
    assert torch.equal(into, lapack.step_batch(many, s0, s0 + 0.05) + big_g)


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


@pytest.mark.parametrize("rhs", [default_rhs(0.7), full_source, None], ids=["separable", "full", "none"])
@pytest.mark.parametrize("uniform", [True, False], ids=["one-dt", "several-dt"])
def test_step_sequence_is_bitwise_steps_one_at_a_time(rhs, uniform) -> None:
    """The coarsest solve's chain kernel: each point is a pttrs step of the previous one, plus g."""
    fast = Heat1D(0.0, 2.0, 67, 0.7, rhs=rhs, solver="rows")
    lapack = Heat1D(0.0, 2.0, 67, 0.7, rhs=rhs, solver="lapack")
    gen = torch.Generator().manual_seed(2)
    u0 = torch.randn(65, dtype=torch.float64, generator=gen)
    g = torch.randn(2 * 9, 65, dtype=torch.float64, generator=gen)[::2]  # strided, as the engine's g
    t = torch.linspace(0.0, 1.8, 10, dtype=torch.float64)
    if not uniform:
        t[3] += 0.05  # two step sizes: the chain falls back to one step per point
    expected = torch.empty(9, 65, dtype=torch.float64)
    prev = u0
    for k in range(9):
        prev = lapack.step(prev, float(t[k]), float(t[k + 1])) + g[k]
        expected[k] = prev
    trajectory = torch.zeros(2 * 9, 65, dtype=torch.float64)
    for problem in (fast, lapack):
        trajectory.zero_()
        problem.step_sequence_into(u0, t[:-1], t[1:], trajectory[1::2], g)
        assert torch.equal(trajectory[1::2], expected)
        assert not trajectory[::2].any()  # nothing written outside the view
    without_g = torch.empty(9, 65, dtype=torch.float64)
    fast.step_sequence_into(u0, t[:-1], t[1:], without_g)
    assert torch.equal(without_g[0], lapack.step(u0, float(t[0]), float(t[1])))


def test_cached_batch_notices_a_changed_time_grid() -> None:
    """The per-batch cache is keyed by the time tensors; changing them in place must not reuse it."""
    fast = Heat1D(0.0, 2.0, 35, 1.0, rhs=default_rhs(1.0), solver="rows")
    lapack = Heat1D(0.0, 2.0, 35, 1.0, rhs=default_rhs(1.0), solver="lapack")
    u = torch.randn(5, 33, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    t0 = torch.linspace(0.0, 0.4, 5, dtype=torch.float64)
    t1 = t0 + 0.1
    out = torch.empty_like(u)
    fast.step_batch_into(u, t0, t1, out)
    assert torch.equal(out, lapack.step_batch(u, t0, t1))
    t1 += 0.05  # same tensor, new values (and a new step size)
    fast.step_batch_into(u, t0, t1, out)
    assert torch.equal(out, lapack.step_batch(u, t0, t1))


@pytest.mark.parametrize("rhs", [default_rhs(0.7), full_source, None], ids=["separable", "full", "none"])
@pytest.mark.parametrize("npts", [1, 3, 4, 9, 64, 69, 71], ids=lambda n: f"npts{n}")
def test_step_intervals_is_bitwise_steps_offset_by_offset(rhs, npts) -> None:
    """The fused F-relaxation: every F-point a pttrs step of the point before it, plus g.

    Full and partial tiles (16 intervals), a last interval cut short, with and without g.
    """
    m = 4
    fast = Heat1D(0.0, 2.0, 67, 0.7, rhs=rhs, solver="rows")
    lapack = Heat1D(0.0, 2.0, 67, 0.7, rhs=rhs, solver="lapack")
    gen = torch.Generator().manual_seed(npts)
    start = torch.randn(npts, 65, dtype=torch.float64, generator=gen)
    t = torch.arange(npts, dtype=torch.float64) / 64 + 0.25  # one step size (dyadic)
    for g in (None, torch.randn(npts, 65, dtype=torch.float64, generator=gen)):
        expected = start.clone()
        for p in range(1, npts):
            if p % m:
                expected[p] = lapack.step(expected[p - 1], float(t[p - 1]), float(t[p]))
                if g is not None:
                    expected[p] += g[p]
        got = start.clone()
        assert fast.step_intervals_into(got, t, m, g) is (npts > 1)
        assert torch.equal(got, expected)
    # steps of different sizes (as linspace's rounding gives): declined, nothing touched
    if npts > 2:
        uneven = t.clone()
        uneven[2:] += 2.0**-40
        got = start.clone()
        assert not fast.step_intervals_into(got, uneven, m)
        assert torch.equal(got, start)
    assert not lapack.step_intervals_into(start.clone(), t, m)


@pytest.mark.parametrize("t_stop, nt", [(2.0, 257), (3.3, 257)], ids=["one-dt", "rounded-dts"])
def test_mgrit_with_fused_f_relaxation_is_bitwise_per_offset(t_stop, nt, monkeypatch) -> None:
    """The engine's F-relaxation through step_intervals_into gives the per-offset solve's history and solution."""
    results = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(Heat1D, "step_intervals_into", lambda self, *args: False)
        problem = Heat1D(0.0, 2.0, 33, 1.0, rhs=default_rhs(1.0))
        mgrit = MGRIT(problem, time_grid(0.0, t_stop, nt), levels=3, cf=4, nested=True, tol=1e-12, max_iter=8)
        results.append(mgrit.solve())
    assert results[0].residuals == results[1].residuals
    assert results[0].steps_per_level == results[1].steps_per_level
    assert torch.equal(results[0].u, results[1].u)
