"""Time-parallel over torch.distributed: the same history and solution for 1, 2, 3 processes."""

import dataclasses

import pytest
import torch

from torchpint.cli.solve import SolveConfig, solve_many
from torchpint.run.launch import WorkerError, run_workers

# one xdist worker runs the whole module: its module-scoped fixture is built once
pytestmark = pytest.mark.xdist_group("engine/test_distributed.py")

CONFIGS = [
    # PyMGRIT-parity set "a" (2 levels, F-relaxation) and a 4-level nested F-cycle.
    SolveConfig(problem="heat1d", nt=65, nx=33, levels=2, cf=[2], relax="F", nested=False, tol=1e-10, max_iter=10),
    SolveConfig(problem="heat1d", nt=129, nx=33, levels=4, cf=[2], relax="FCF", cycle="F", nested=True, tol=1e-10, max_iter=10),
    # Ranks owning no C-point (nt=9, cf=8: rank 1 of 3 owns points 3..5 only) ...
    SolveConfig(problem="dahlquist", nt=9, t_stop=1.0, levels=2, cf=[8], relax="FCF", tol=1e-14, max_iter=5),
    # ... and a rank owning nothing on the coarsest level, with weighted F(CF)^2 relaxation.
    SolveConfig(problem="brusselator", nt=9, t_stop=1.0, levels=3, cf=[4, 2], relax="F(CF)^2", weight_c=1.2, tol=1e-14, max_iter=8),
    SolveConfig(
        problem="brusselator", nt=97, t_stop=4.0, levels=3, cf=[4, 3], relax="FCF", cycle="V", nested=False, tol=1e-12, max_iter=30
    ),
    # Partial last C-intervals on every level (PyMGRIT-parity set "m_partial").
    SolveConfig(
        problem="heat1d", nt=70, nx=33, levels=3, cf=[2], relax="FCF", cycle="F", nested=True, tol=1e-10, max_iter=10,
        allow_partial=True,
    ),
    # Only C-points kept on the intermediate levels (F-points rebuilt across rank boundaries).
    SolveConfig(
        problem="heat1d", nt=129, nx=33, levels=4, cf=[2, 4, 2], relax="FCF", cycle="F", nested=True, tol=1e-10,
        max_iter=10, coarse_storage="c",
    ),
    SolveConfig(
        problem="brusselator", nt=70, t_stop=4.0, levels=3, cf=[3, 2], relax="F(CF)^2", weight_c=1.2, nested=False,
        tol=1e-12, max_iter=30, allow_partial=True, coarse_storage="c",
    ),
]


def with_solution(configs):
    return [dataclasses.replace(c, verbose=False, return_solution=True) for c in configs]


@pytest.fixture(scope="module")
def serial():
    return solve_many(with_solution(CONFIGS))


@pytest.mark.parametrize("nproc", [2, 3])
def test_history_and_solution_independent_of_process_count(serial, nproc: int) -> None:
    parallel = run_workers(solve_many, nproc, (with_solution(CONFIGS),), timeout_s=240)
    for rank_results in parallel:  # every rank has the same, gathered answer
        for config, ours, ref in zip(CONFIGS, rank_results, serial):
            assert ours["iterations"] == ref["iterations"], config
            assert ours["residuals"] == pytest.approx(ref["residuals"], rel=1e-12, abs=1e-14 * ref["residuals"][0]), config
            assert ours["t"] == ref["t"]
            assert torch.allclose(torch.tensor(ours["u"]), torch.tensor(ref["u"]), rtol=0, atol=1e-13), config


def test_explicit_partition_and_reversed_rank_order(serial) -> None:
    """Uneven blocks, ranks numbered backwards (the adjoint layout): still the same answer."""
    base = with_solution(CONFIGS)[1]
    config = dataclasses.replace(base, partition=[(0, 10), (10, 100), (100, 129)], reverse_ranks=True)
    results = run_workers(solve_many, 3, ([config],), timeout_s=240)
    for (ours,) in results:
        assert ours["residuals"] == pytest.approx(serial[1]["residuals"], rel=1e-12)
        assert torch.allclose(torch.tensor(ours["u"]), torch.tensor(serial[1]["u"]), rtol=0, atol=1e-13)


def test_nan_in_one_rank_stops_every_rank_with_the_iteration() -> None:
    config = dataclasses.replace(CONFIGS[0], verbose=False, fault={"kind": "nan", "after_steps": 150, "rank": 1})
    with pytest.raises(WorkerError, match=r"iteration \d+: the space-time residual is not finite"):
        run_workers(solve_many, 2, ([config],), timeout_s=120)


class _SlowOnRank1:
    """Heat1D whose batched steps take 2 ms longer on rank 1: rank 0 ends its iterations first."""

    def __init__(self) -> None:
        from torchpint.problems import Heat1D, default_rhs

        self.inner = Heat1D(0.0, 2.0, 33, rhs=default_rhs())

    def initial_value(self) -> torch.Tensor:
        return self.inner.initial_value()

    def step(self, u, t_start, t_stop):
        return self.inner.step(u, t_start, t_stop)

    def step_batch(self, u, t_start, t_stop):
        import os
        import time

        if os.environ.get("RANK") == "1":
            time.sleep(0.002)
        return self.inner.step_batch(u, t_start, t_stop)


def _solve_running_ahead(run_ahead: bool, fault: dict | None = None) -> dict:
    """Case-1-like solve on 2 ranks (shared memory) that records, on each rank, the callbacks and
    how often the rank left an iteration with its residual's sum still open."""
    from torchpint.engine import MGRIT, default_comm, time_grid
    from torchpint.engine.mgrit import NonFiniteError
    from torchpint.engine.shm import SharedMemorySum
    from torchpint.testing.faults import FaultyProblem

    torch.set_num_threads(1)
    comm = default_comm()
    went_on = []
    done = SharedMemorySum.done

    def counting_done(self):
        complete = done(self)
        went_on.append(not complete)  # only a rank that need not wait asks without waiting
        return complete

    SharedMemorySum.done = counting_done
    problem = _SlowOnRank1() if fault is None else FaultyProblem(_SlowOnRank1(), **fault)
    seen = []
    solver = MGRIT(problem, time_grid(0.0, 2.0, 129), levels=3, cf=4, relax="FCF", nested=False, tol=1e-10,
                   max_iter=20, comm=comm, run_ahead=run_ahead, callback=lambda k, r, f: seen.append((k, r, f)))
    try:
        result = solver.solve()
    except NonFiniteError as error:
        return {"kind": type(comm).__name__, "nan_at": error.iteration, "went_on": sum(went_on)}
    return {"kind": type(comm).__name__, "residuals": result.residuals, "u": result.u.tolist(), "seen": seen,
            "went_on": sum(went_on)}


def test_rank_0_runs_ahead_of_the_sum_with_the_same_bits() -> None:
    """Rank 0 goes on while the later rank still works (it asked and did not wait), and everything
    it reports is the same as without running ahead: residuals, solution, callbacks in order."""
    ahead = run_workers(_solve_running_ahead, 2, (True,), timeout_s=240)
    plain = run_workers(_solve_running_ahead, 2, (False,), timeout_s=240)
    assert ahead[0]["kind"] == "SharedMemoryComm"
    assert ahead[0]["went_on"] > 0 and plain[0]["went_on"] == 0
    assert ahead[1]["went_on"] == 0  # the later rank never runs ahead
    for a, p in zip(ahead, plain):
        assert a["residuals"] == p["residuals"] and a["u"] == p["u"]
        assert a["seen"] == p["seen"] == [(k + 1, r, f) for k, (r, f) in
                                          enumerate(zip(p["residuals"], [None] + [b / a for a, b in zip(p["residuals"], p["residuals"][1:])]))]


def test_a_nan_on_the_later_rank_stops_rank_0_running_ahead_at_the_same_iteration() -> None:
    got = run_workers(_solve_running_ahead, 2, (True, {"kind": "nan", "after_steps": 600, "rank": 1}), timeout_s=120)
    assert "nan_at" in got[0] and got[0]["nan_at"] == got[1]["nan_at"] > 1
