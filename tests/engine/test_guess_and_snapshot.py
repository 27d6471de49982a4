"""The engine's hooks for long solves and for callers that must not build levels themselves:
``MGRIT.solve(guess=..., done=..., snapshot=...)``, ``MGRIT.owned`` and ``sequential_pass``."""

import pytest
import torch

from torchpint.engine import MGRIT, ConfigError, sequential_pass, time_grid
from torchpint.problems import Heat1D, default_rhs


def heat() -> tuple[Heat1D, torch.Tensor]:
    return Heat1D(0.0, 2.0, 17, 1.0, rhs=default_rhs()), time_grid(0.0, 2.0, 33)


def test_continuing_from_a_snapshot_repeats_the_uninterrupted_iteration() -> None:
    problem, t = heat()
    solver = MGRIT(problem, t, levels=3, cf=2, tol=1e-13, nested=False)
    blocks: dict[int, torch.Tensor] = {}
    whole = solver.solve(snapshot=lambda k, block: blocks.__setitem__(k, block.clone()))
    assert whole.iterations >= 4 and solver.owned == range(0, 33) and sorted(blocks) == list(range(1, whole.iterations + 1))
    for k in (1, whole.iterations - 2):
        again = MGRIT(problem, t, levels=3, cf=2, tol=1e-13, nested=False).solve(guess=blocks[k], done=whole.residuals[:k])
        assert again.residuals == whole.residuals and again.iterations == whole.iterations
        assert torch.equal(again.u, whole.u)


def test_a_plain_initial_guess_and_bad_guesses() -> None:
    problem, t = heat()
    exact = sequential_pass(problem, t, problem.initial_value())
    # Started from the exact solution, the first residual is rounding only.
    solved = MGRIT(problem, t, levels=2, cf=4, tol=1e-10).solve(guess=exact.u)
    assert solved.iterations == 1 and solved.residuals[0] < 1e-12
    with pytest.raises(ConfigError, match="the initial guess holds 3 points, this rank owns 33"):
        MGRIT(problem, t, levels=2, cf=4).solve(guess=exact.u[:3])
    with pytest.raises(ConfigError, match="needs the trajectory"):
        MGRIT(problem, t, levels=2, cf=4).solve(done=[1.0])


def test_sequential_pass_is_time_stepping() -> None:
    problem, t = heat()
    result = sequential_pass(problem, t, problem.initial_value())
    u = problem.initial_value()
    for i in range(32):
        u = problem.step(u, float(t[i]), float(t[i + 1]))
    assert torch.equal(result.u[-1], u) and result.steps_per_level == [32] and result.iterations == 1
    assert torch.equal(result.t, t)
