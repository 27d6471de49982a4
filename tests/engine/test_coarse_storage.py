"""Keeping only C-points on the intermediate coarse levels: same iteration, less memory."""

import dataclasses

import pytest
import torch

from torchpint.cli.solve import SolveConfig, solve_many
from torchpint.engine import MGRIT, time_grid
from torchpint.problems import Brusselator, Dahlquist, Heat1D, default_rhs

CASES = [
    ("heat V 4 levels cf 2", Heat1D(0.0, 2.0, 33, 1.0, rhs=default_rhs()), 129, dict(levels=4, cf=2)),
    ("heat F nested cf 4,2,2", Heat1D(0.0, 2.0, 33, 1.0, rhs=default_rhs()), 129, dict(levels=4, cf=[4, 2, 2], cycle="F")),
    ("brusselator F(CF)^2 weighted", Brusselator(), 97, dict(levels=3, cf=[4, 3], relax="F(CF)^2", weight_c=1.3)),
    ("dahlquist F-relax no nesting", Dahlquist(), 129, dict(levels=5, cf=2, relax="F", nested=False)),
    ("heat partial intervals", Heat1D(0.0, 2.0, 33, 1.0, rhs=default_rhs()), 70, dict(levels=3, cf=2, cycle="F", allow_partial=True)),
]


@pytest.mark.parametrize("name,problem,nt,options", CASES, ids=[c[0] for c in CASES])
def test_same_history_same_steps_fewer_states(name, problem, nt, options) -> None:
    t = time_grid(0.0, 2.0, nt)
    common = dict(tol=1e-13, max_iter=12, **options)
    full = MGRIT(problem, t, **common).solve()
    lean = MGRIT(problem, t, coarse_storage="c", **common).solve()
    assert lean.iterations == full.iterations
    assert lean.residuals == pytest.approx(full.residuals, rel=1e-10, abs=1e-15)
    assert torch.allclose(lean.u, full.u, rtol=0, atol=1e-13)
    # Rebuilding F-points on the fly costs no extra steps: the fused sweeps do what F-relaxation did.
    assert lean.steps_per_level == full.steps_per_level
    # Intermediate levels hold g at every point but u only at their C-points.
    solver = MGRIT(problem, t, **common)
    sizes = [g.numel() for g in solver.grids]
    for lvl in range(1, solver.num_levels - 1):
        assert full.states_per_level[lvl] == 2 * sizes[lvl]
        assert lean.states_per_level[lvl] == sizes[lvl] + sizes[lvl + 1]
    assert lean.states_per_level[0] == full.states_per_level[0] == sizes[0]
    assert lean.states_per_level[-1] == full.states_per_level[-1] == 2 * sizes[-1]


def test_rank_boundaries_inside_intervals() -> None:
    """3 processes, blocks that cut coarse intervals (and a rank with no coarse C-point)."""
    config = SolveConfig(problem="heat1d", nt=97, nx=17, levels=4, cf=[2, 4, 2], relax="FCF", cycle="V", tol=1e-12,
                         max_iter=15, partition=[(0, 13), (13, 22), (22, 97)], verbose=False, return_solution=True)
    from torchpint.run.launch import run_workers

    (reference,) = solve_many([dataclasses.replace(config, partition=None)])
    lean = dataclasses.replace(config, coarse_storage="c")
    for (ours,) in run_workers(solve_many, 3, ([lean],), timeout_s=240):
        assert ours["residuals"] == pytest.approx(reference["residuals"], rel=1e-10)
        assert torch.allclose(torch.tensor(ours["u"]), torch.tensor(reference["u"]), rtol=0, atol=1e-13)


def test_unknown_storage_is_refused() -> None:
    from torchpint.engine import ConfigError

    with pytest.raises(ConfigError, match="coarse_storage"):
        MGRIT(Dahlquist(), time_grid(0, 1, 9), coarse_storage="f")
