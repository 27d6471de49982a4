"""A long MGRIT training solve checkpoints every k iterations; resumed, it continues exactly.

"Exactly": the remaining residual history and the final weights are bitwise those of the
uninterrupted solve (the same arithmetic on the same data), on one process here and on three in
``test_distributed.py``.
"""

import pytest

from torchpint.testing.training import assert_same_solve
from torchpint.training import TaskSpec, TrainingConfigError, build_task, train_mgrit
from torchpint.training.solver import SolveSnapshot


def test_resumed_solve_is_the_uninterrupted_one() -> None:
    task, options = build_task(TaskSpec("xor", steps=64, solver="2", cycle="V"))
    snapshots: list[SolveSnapshot] = []
    whole = train_mgrit(task, options, checkpoint_every=3, on_checkpoint=snapshots.append)
    assert [s.iteration for s in snapshots] == list(range(3, whole.iterations + 1, 3))
    assert (snapshots[0].lo, snapshots[0].hi) == (0, 65) and snapshots[0].residuals == whole.residuals[:3]
    for snapshot in snapshots[:2]:
        assert_same_solve(train_mgrit(task, options, resume=snapshot), whole)


def test_momentum_state_and_partial_intervals_resume_exactly() -> None:
    # digits MLP with momentum (a dict state), N = 37: every level ends with a partial C-interval
    task, options = build_task(TaskSpec("digits", steps=37, cycle="F", optimizer="momentum", alpha_b=0.01,
                                        coarse_update="frozen"))
    snapshots: list[SolveSnapshot] = []
    whole = train_mgrit(task, options, checkpoint_every=2, on_checkpoint=snapshots.append)
    assert_same_solve(train_mgrit(task, options, resume=snapshots[0]), whole)


def test_snapshot_of_another_partition_is_refused() -> None:
    task, options = build_task(TaskSpec("xor", steps=16))
    block = task.initial_state().unsqueeze(0).expand(9, -1).clone()
    foreign = SolveSnapshot(iteration=1, residuals=[1.0], initial_residual=2.0, lo=0, hi=9, block=block)
    with pytest.raises(TrainingConfigError, match="points 0..8, this rank owns 0..16"):
        train_mgrit(task, options, resume=foreign)
    with pytest.raises(TrainingConfigError, match="checkpoint_every must be >= 0"):
        train_mgrit(task, options, checkpoint_every=-1)
