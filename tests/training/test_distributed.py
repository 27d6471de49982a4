"""Time-parallel MGRIT training over torch.distributed: the same history for 1, 2 and 3 processes."""

import pytest
import torch
from torch import nn

from torchpint.run.launch import run_workers
from torchpint.training import SGD, BatchSchedule, MGRITOptions, TaskSpec, TrainingTask, build_task, serial_train
from torchpint.testing.training import assert_same_solve, train_many, unpack
from torchpint.training.tasks import cross_entropy

# one xdist worker runs the whole module: its module-scoped fixture is built once
pytestmark = pytest.mark.xdist_group("training/test_distributed.py")


def jobs():
    # XOR F-cycle on N = 101 (levels end with partial C-intervals; ranks owning no coarse point)
    xor, xor_options = build_task(TaskSpec("xor", steps=101, solver="1", cycle="F", alpha_b=0.5))
    # a minibatch MLP with momentum (dict state), V-cycle
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    torch.manual_seed(0)
    mlp = TrainingTask(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)), cross_entropy,
                       BatchSchedule.from_loader(x, y, 40, 8, seed=0), SGD(lr=0.05, momentum=0.9))
    return [(xor, xor_options), (mlp, MGRITOptions(cycle="V"))]


@pytest.fixture(scope="module")
def one_process():
    return [unpack(p) for p in run_workers(train_many, 1, (jobs(),), timeout_s=240)[0]]


@pytest.mark.parametrize("nproc", [2, 3])
def test_same_history_for_every_process_count(one_process, nproc: int) -> None:
    """On 3 processes each solve is also checkpointed and resumed from its first snapshot (each rank
    its block): the resumed solve is bitwise the uninterrupted one."""
    packed = run_workers(train_many, nproc, (jobs(), 2 if nproc == 3 else 0), timeout_s=240)[0]
    parallel = [unpack(p) for p in packed]
    for job, ours, ref in zip(packed, parallel, one_process):
        if nproc == 3:
            assert job["resumed_from"] == 2
            assert_same_solve(unpack(job["resumed"]), ours)
        assert ours.iterations == ref.iterations
        assert ours.initial_residual == pytest.approx(ref.initial_residual, rel=1e-12)
        assert ours.residuals == pytest.approx(ref.residuals, rel=1e-6, abs=1e-14 * ref.initial_residual)
        assert torch.equal(ours.t, ref.t)
        for a, b in zip(torch.atleast_1d(ours.weights), torch.atleast_1d(ref.weights)):
            assert abs(float(a - b)) <= 1e-13
        assert ours.options["nproc"] == nproc


def test_one_process_matches_serial_training(one_process) -> None:
    for (task, _), result in zip(jobs(), one_process):
        assert float((result.weights - serial_train(task, keep="last").weights).abs().max()) <= 1e-8

