"""Replaying a recorded iteration (engine/replay.py): the same bits as running the cycle, on 1 to 3 processes."""

import dataclasses

import pytest
import torch

from torchpint.cli.solve import SolveConfig, solve_many
from torchpint.engine import MGRIT, time_grid
from torchpint.engine.replay import IterationRecorder, Refused
from torchpint.engine.timing import PhaseTimer
from torchpint.problems import Dahlquist
from torchpint.run.launch import run_workers

pytestmark = pytest.mark.xdist_group("engine/test_replay.py")

CONFIGS = [
    # case 1's shape, small: 5 levels, V-cycles, FCF, no nested iteration
    SolveConfig(problem="heat1d", nt=257, nx=17, levels=5, cf=[4], relax="FCF", nested=False, tol=1e-12, max_iter=20),
    SolveConfig(problem="heat1d", nt=129, nx=33, levels=4, cf=[2], relax="FCF", cycle="F", nested=True, tol=1e-10, max_iter=10),
    SolveConfig(problem="heat1d", nt=65, nx=33, levels=2, cf=[2], relax="F", nested=False, tol=1e-10, max_iter=10),
    SolveConfig(problem="dahlquist", nt=101, levels=3, cf=[5, 4], relax="F(CF)^2", weight_c=0.7, tol=1e-13, max_iter=20),
    SolveConfig(problem="brusselator", nt=97, t_stop=4.0, levels=3, cf=[4, 3], relax="FCF", nested=False, tol=1e-12, max_iter=30),
    SolveConfig(problem="heat1d", nt=70, nx=33, levels=3, cf=[2], relax="FCF", cycle="F", tol=1e-10, max_iter=10, allow_partial=True),
    SolveConfig(problem="heat1d", nt=129, nx=33, levels=4, cf=[2, 4, 2], relax="FCF", cycle="F", tol=1e-10, max_iter=10,
                coarse_storage="c"),
    SolveConfig(problem="brusselator", nt=70, t_stop=4.0, levels=3, cf=[3, 2], relax="F(CF)^2", weight_c=1.2, nested=False,
                tol=1e-12, max_iter=30, allow_partial=True, coarse_storage="c"),
]


def both(configs: list[SolveConfig]) -> list[SolveConfig]:
    """Each config without and with replay (solution returned)."""
    return [dataclasses.replace(c, verbose=False, return_solution=True, replay=r) for c in configs for r in (False, True)]


def solve_counting_replays(configs: list[SolveConfig]) -> list[dict]:
    """``solve_many``, each result with the number of iterations that were replayed."""
    from torchpint.engine.replay import Plan

    replays = []
    original = Plan.replay

    def counting(self, *args):
        replays.append(1)
        return original(self, *args)

    Plan.replay = counting
    try:
        results = []
        for config in configs:
            replays.clear()
            results.append({**solve_many([config])[0], "replays": len(replays)})
        return results
    finally:
        Plan.replay = original


def assert_same_bits(results: list[dict]) -> None:
    for config, (plain, replayed) in zip(CONFIGS, zip(results[::2], results[1::2])):
        # iteration 1 runs the cycle, iteration 2 is recorded, the later ones are replayed
        assert plain["replays"] == 0 and replayed["replays"] == plain["iterations"] - 2 > 0, config
        assert replayed["residuals"] == plain["residuals"], config
        assert replayed["u"] == plain["u"], config
        for key in ("iterations", "converged", "steps_per_level"):
            assert replayed.get(key) == plain.get(key), (key, config)


def test_replay_gives_the_bits_of_running_the_cycle() -> None:
    assert_same_bits(solve_counting_replays(both(CONFIGS)))


@pytest.mark.parametrize("nproc,transport", [(2, "shm"), (3, "shm"), (2, "gloo")])
def test_replay_gives_the_same_bits_on_several_processes(nproc: int, transport: str) -> None:
    configs = [dataclasses.replace(c, transport=transport) for c in both(CONFIGS)]
    ranks = run_workers(solve_counting_replays, nproc, (configs,), timeout_s=240)
    for rank_results in ranks:
        assert_same_bits(rank_results)
    # The earlier rank steps the later rank's first halo image: the steps move, their sum does not.
    serial = solve_many([dataclasses.replace(c, verbose=False) for c in CONFIGS])
    for k, (config, one) in enumerate(zip(CONFIGS, serial)):
        every_rank = [r[2 * k + 1]["steps_per_level"] for r in ranks]
        assert [sum(s) for s in zip(*every_rank)] == one["steps_per_level"], config


def test_the_cycle_runs_twice_and_is_replayed_after(monkeypatch) -> None:
    """Iteration 1 (with its leading F-relaxation) and the recorded iteration 2 run the cycle;
    the later ones only replay it, with the steps counted and the phases timed."""
    cycles = []
    original = MGRIT._cycle

    def counting(self, levels, lvl, *args, **kwargs):
        if lvl == 0:
            cycles.append(lvl)
        return original(self, levels, lvl, *args, **kwargs)

    monkeypatch.setattr(MGRIT, "_cycle", counting)
    runs = {}
    for replay in (False, True):
        cycles.clear()
        solver = MGRIT(Dahlquist(), time_grid(0, 5, 65), levels=3, cf=4, tol=0.0, max_iter=8, replay=replay)
        runs[replay] = (solver.solve(), len(cycles))
    (plain, plain_cycles), (replayed, replayed_cycles) = runs[False], runs[True]
    assert plain_cycles == 8 and replayed_cycles == 2
    assert replayed.residuals == plain.residuals and torch.equal(replayed.u, plain.u)
    assert replayed.steps_per_level == plain.steps_per_level
    assert set(replayed.phase_seconds) == set(plain.phase_seconds)
    assert replayed.options["replay"] is True and plain.options["replay"] is False


def test_an_engine_decision_on_a_tensor_value_refuses_the_recording() -> None:
    timer = PhaseTimer()
    x = torch.ones(3)
    recorder = IterationRecorder(timer)
    with recorder:
        x.mul_(2)
        if float(x.sum()) > 0:  # what follows depends on the data: not replayable
            x.add_(1)
    with pytest.raises(Refused, match="__float__"):
        recorder.plan([])


def test_a_state_that_requires_grad_refuses_the_recording() -> None:
    timer = PhaseTimer()
    weights = torch.ones(3, requires_grad=True)
    recorder = IterationRecorder(timer)
    with recorder:
        recorder.call(lambda: weights * 2)  # a step whose result autograd would track
    with pytest.raises(Refused, match="requires grad"):
        recorder.plan([])


def test_a_recording_replays_writes_and_new_tensors_into_the_same_storage() -> None:
    timer = PhaseTimer()
    a, out = torch.arange(4.0), torch.zeros(4)
    recorder = IterationRecorder(timer)
    with recorder, timer.phase("work"):
        doubled = a * 2  # a new tensor: replayed into the same one
        view = doubled[1:]  # a view of it: not replayed, stays valid
        torch.add(view, 1, out=out[1:])  # a write: replayed

        def problem_step() -> None:
            a.add_(10)

        recorder.call(problem_step)  # a call into the problem: replayed as a call
    plan = recorder.plan([3])
    a.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))

    class Level:
        steps_taken = 0

    level = Level()
    plan.replay(timer, [level])
    assert torch.equal(doubled, torch.tensor([2.0, 4.0, 6.0, 8.0]))
    assert torch.equal(out, torch.tensor([0.0, 5.0, 7.0, 9.0]))
    assert torch.equal(a, torch.tensor([11.0, 12.0, 13.0, 14.0]))
    assert level.steps_taken == 3 and timer.seconds["work"] > 0


def test_dict_states_and_a_problem_with_state_of_its_own_replay_alike(monkeypatch) -> None:
    """States that are dicts of tensors; a problem that counts its calls and changes with them:
    a replayed step runs the problem's own code, so it sees what the problem does."""

    class Drifting:
        """Two decoupled decays in a dict state whose rate drifts with every call (Python state)."""

        def __init__(self) -> None:
            self.calls = 0

        def step(self, u, t0, t1):
            self.calls += 1
            rate = 1.0 + 1e-3 * (self.calls % 7)
            dt = t1 - t0
            return {"a": u["a"] / (1 + rate * dt), "b": u["b"] / (1 + 2 * rate * dt)}

    from torchpint.engine.replay import Plan

    replays = []
    original = Plan.replay
    monkeypatch.setattr(Plan, "replay", lambda self, *args: replays.append(1) or original(self, *args))
    u0 = {"a": torch.ones(2, dtype=torch.float64), "b": torch.ones(3, dtype=torch.float64)}
    runs = []
    for replay in (False, True):
        problem = Drifting()
        result = MGRIT(problem, time_grid(0, 1, 65), levels=3, cf=4, tol=0.0, max_iter=6, replay=replay).solve(u0)
        runs.append((result, problem.calls))
    (plain, plain_calls), (replayed, replayed_calls) = runs
    assert len(replays) == 6 - 2
    assert replayed_calls == plain_calls
    assert replayed.residuals == plain.residuals
    assert all(torch.equal(replayed.u[k], plain.u[k]) for k in ("a", "b"))
