"""Properties of the serial engine: exactness, convergence, options, states."""


import pytest
import torch

from torchpint.engine import MGRIT, ConfigError, GridError, NonFiniteError, Parareal, time_grid
from torchpint.engine.state import stack
from torchpint.problems import Brusselator, Dahlquist, Heat1D, default_rhs
from torchpint.testing.faults import FaultyProblem


def sequential(problem, t: torch.Tensor, u0):
    states = [u0]
    for i in range(1, t.numel()):
        states.append(problem.step(states[-1], float(t[i - 1]), float(t[i])))
    return stack(states)


def heat(nx: int = 33) -> Heat1D:
    return Heat1D(0.0, 2.0, nx, 1.0, rhs=default_rhs())


def test_one_level_equals_sequential_stepping_exactly() -> None:
    problem, t = heat(), time_grid(0, 2, 65)
    result = MGRIT(problem, t, levels=1).solve()
    expected = sequential(problem, t, problem.initial_value())
    assert result.iterations == 1 and result.residuals == [0.0]
    assert torch.equal(result.u, expected)


def test_batched_step_equals_single_steps() -> None:
    problem = heat()
    u = torch.randn(5, 31, dtype=torch.float64)
    t0 = torch.linspace(0, 1, 5, dtype=torch.float64)
    t1 = t0 + torch.tensor([0.1, 0.1, 0.2, 0.1, 0.3], dtype=torch.float64)
    batched = problem.step_batch(u, t0, t1)
    single = torch.stack([problem.step(u[i], float(t0[i]), float(t1[i])) for i in range(5)])
    assert torch.allclose(batched, single, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("problem", [heat(), Dahlquist(), Brusselator()], ids=["heat", "dahlquist", "brusselator"])
@pytest.mark.parametrize("cycle", ["V", "F"])
def test_converges_to_the_sequential_solution(problem, cycle: str) -> None:
    t = time_grid(0, 2, 129)
    result = MGRIT(problem, t, levels=3, cf=[4, 2], cycle=cycle, tol=1e-12, max_iter=40).solve()
    expected = sequential(problem, t, problem.initial_value())
    assert result.converged
    scale = float(expected.abs().max())
    assert float((result.u - expected).abs().max()) <= 1e-10 * max(scale, 1.0)
    # Monotone decrease of the residual: a sanity property of these well-behaved problems.
    assert all(b < a for a, b in zip(result.residuals, result.residuals[1:]))


def test_parareal_finite_termination() -> None:
    """After k iterations the first k slices equal the sequential solution (to rounding)."""
    fine = Brusselator()
    t = time_grid(0, 4, 8 * 10 + 1)  # 8 slices of 10 fine steps
    expected = sequential(fine, t, fine.initial_value())[::10]
    for k in range(1, 9):
        result = Parareal(fine, t, steps_per_slice=10, iterations=k, store="c").solve()
        assert result.iterations == k
        error = (result.u - expected).abs().amax(dim=1)
        assert float(error[: k + 1].max()) <= 1e-13, (k, error)
        if k <= 4:
            assert float(error[k + 2 :].max()) > 1e-12  # not exact yet beyond slice k+1
    assert float(error.max()) <= 1e-13  # k = N: exact everywhere


def test_parareal_with_cheap_coarse_problem() -> None:
    fine, coarse = Dahlquist(lam=-2.0, method="TR"), Dahlquist(lam=-2.0, method="BE")
    t = time_grid(0, 5, 20 * 5 + 1)
    result = Parareal(fine, t, steps_per_slice=5, coarse=coarse, iterations=30, tol=1e-13).solve()
    assert result.converged and result.iterations < 20  # fewer than the 20 slices
    expected = sequential(fine, t, fine.initial_value())
    assert torch.allclose(result.u, expected, rtol=0, atol=1e-12)


def test_dict_and_tuple_states() -> None:
    class Pair:
        """Two decoupled Dahlquist equations in a dict state, one step per call (no batch)."""

        def step(self, u, t0, t1):
            dt = t1 - t0
            return {"a": u["a"] / (1 + dt), "b": (u["b"][0] / (1 + 2 * dt), u["b"][1] / (1 + 3 * dt))}

    u0 = {"a": torch.ones(2, dtype=torch.float64), "b": (torch.ones(3, dtype=torch.float64), torch.ones(1, dtype=torch.float64))}
    t = time_grid(0, 1, 33)
    result = MGRIT(Pair(), t, levels=3, cf=2, tol=1e-13).solve(u0)
    assert result.converged
    assert torch.allclose(result.u["a"][-1], torch.full((2,), (1 / (1 + 1 / 32)) ** 32, dtype=torch.float64))
    assert torch.allclose(result.u["b"][1][-1], torch.full((1,), (1 / (1 + 3 / 32)) ** 32, dtype=torch.float64))


def test_store_c_points_only() -> None:
    result = MGRIT(Dahlquist(), time_grid(0, 5, 101), levels=3, cf=[5, 4], store="c", tol=1e-12).solve()
    assert result.t.numel() == 21 and result.u.shape == (21, 1)


def test_relative_tolerance_and_max_iter() -> None:
    t = time_grid(0, 2, 65)
    rel = MGRIT(heat(), t, levels=2, tol=0.0, rtol=1e-4, max_iter=50).solve()
    assert rel.converged and rel.residuals[-1] < 1e-4 * rel.residuals[0] <= rel.residuals[-2]
    capped = MGRIT(heat(), t, levels=2, tol=0.0, max_iter=3).solve()
    assert capped.iterations == 3 and not capped.converged


def test_result_reports_factors_and_phases() -> None:
    result = MGRIT(heat(), time_grid(0, 2, 65), levels=3, nested=False, tol=1e-10).solve()
    factors = result.convergence_factors
    assert len(factors) == result.iterations - 1
    assert factors[0] == pytest.approx(result.residuals[1] / result.residuals[0])
    assert 0 < result.mean_convergence_factor < 1
    for phase in ("f_relax", "c_relax", "restrict", "coarse_solve", "correct", "residual", "step"):
        assert result.phase_seconds[phase] >= 0
    assert result.steps_per_level[0] > result.steps_per_level[1] > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"levels": 3, "cf": 2, "nt": 64}, "not compatible with the coarsening"),
        ({"levels": 2, "cf": 1}, "cf must be >= 2"),
        ({"levels": 9, "cf": 2}, "more levels than the grid allows"),
        ({"levels": 2, "tol": -1.0}, "tol must be"),
        ({"levels": 2, "max_iter": 0}, "max_iter must be"),
        ({"levels": 2, "relax": "FF"}, "unknown relaxation"),
        ({"levels": 2, "cycle": "W"}, "cycle must be"),
    ],
)
def test_bad_options_are_refused_clearly(kwargs: dict, message: str) -> None:
    nt = kwargs.pop("nt", 65)
    with pytest.raises((ConfigError, GridError), match=message):
        MGRIT(Dahlquist(), time_grid(0, 1, nt), **kwargs)


def test_nan_step_stops_and_names_the_iteration() -> None:
    problem = FaultyProblem(heat(), kind="nan", after_steps=300)
    with pytest.raises(NonFiniteError, match=r"iteration \d+"):
        MGRIT(problem, time_grid(0, 2, 65), levels=2, nested=False, tol=1e-12).solve()


@pytest.mark.parametrize("partition", [[(0, 30)], [(0, 40), (40, 65)], [(0, 0), (0, 65)]])
def test_bad_partition_is_refused(partition) -> None:
    with pytest.raises(GridError, match="partition"):
        MGRIT(Dahlquist(), time_grid(0, 1, 65), levels=2, partition=partition)


def test_a_comm_with_only_a_blocking_sum_still_works() -> None:
    """A comm of the user's own written before ``isum`` existed: the solve uses its ``sum``."""
    from torchpint.engine import MGRIT, SerialComm, time_grid
    from torchpint.problems import Dahlquist

    class OldComm:
        rank, size = 0, 1

        def __init__(self) -> None:
            self.sums = 0

        def sum(self, value):
            self.sums += 1
            return value

        def wait_sends(self) -> None:
            pass

    old = OldComm()
    grid = time_grid(0.0, 5.0, 65)
    ours = MGRIT(Dahlquist(), grid, levels=3, cf=2, tol=1e-10, comm=old).solve()
    ref = MGRIT(Dahlquist(), grid, levels=3, cf=2, tol=1e-10, comm=SerialComm()).solve()
    assert ours.residuals == ref.residuals and old.sums == ours.iterations
