"""Residual histories equal PyMGRIT 1.0.6's, option set by option set.

The reference numbers were produced by ``benchmarks/pymgrit_reference.py`` (PyMGRIT in its
own virtual environment) and are stored as data: the suite does not need PyMGRIT.
"""

import json
from pathlib import Path

import pytest

from torchpint.cli.solve import SolveConfig, solve_worker

RECORDS = json.loads((Path(__file__).parents[1] / "data" / "pymgrit_reference.json").read_text())
BENCHMARK = "k"  # the 30-second benchmark configuration: compared by benchmarks/, not here


def config_for(record: dict) -> SolveConfig:
    o = record["options"]
    cf = o.get("coarsening_per_level") or [o["coarsening"]]
    config = SolveConfig(
        problem=record["problem"], nt=o["nt"], t_start=o["t_start"], t_stop=o["t_stop"],
        levels=o["levels"], cf=cf, relax=o["relax"], weight_c=o["weight_c"], cycle=o["cycle_type"],
        nested=o["nested_iteration"], tol=o["tol"], max_iter=o["max_iter"], verbose=False,
        allow_partial=record["name"].endswith("_partial"),
    )
    if record["problem"] == "heat1d":
        config.nx, config.x_start, config.x_end, config.a = o["nx"], o["x_start"], o["x_end"], o["a"]
    else:
        config.lam, config.method = o["constant_lambda"], o["method"]
    return config


def assert_same_history(ours: list[float], theirs: list[float]) -> None:
    assert len(ours) == len(theirs), (ours, theirs)
    floor = 1e-13 * theirs[0]  # below this both are rounding noise (PyMGRIT reports exact zeros)
    for k, (a, b) in enumerate(zip(ours, theirs), start=1):
        if b <= floor:
            assert a <= floor, f"iteration {k}: {a} vs {b}"
        else:
            assert a == pytest.approx(b, rel=1e-6), f"iteration {k}: {a} vs {b}"


@pytest.mark.parametrize(
    "record", [r for r in RECORDS if r["name"] != BENCHMARK and r.get("nproc", 1) == 1], ids=lambda r: r["name"]
)
def test_residual_history_matches_pymgrit(record: dict) -> None:
    ours = solve_worker(config_for(record))["residuals"]
    assert_same_history(ours, record["residuals"])


def test_dahlquist_history_from_methods_reference() -> None:
    """The history quoted in shared/reference/methods.md, to 3 significant digits."""
    config = SolveConfig(problem="dahlquist", nt=101, t_start=0.0, t_stop=5.0, levels=2, cf=[2],
                         tol=1e-11, verbose=False)
    residuals = solve_worker(config)["residuals"]
    expected = [7.186e-05, 1.246e-06, 2.10e-08, 3.14e-10, 3.98e-12]
    assert [float(f"{r:.3g}") for r in residuals[:5]] == [float(f"{e:.3g}") for e in expected]
