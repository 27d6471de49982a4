"""The general API: any nn.Module, loss, seeded batch schedule and torch.optim-equivalent update."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from torchpint.training import (
    SGD,
    Adam,
    BatchSchedule,
    MGRITOptions,
    TrainingTask,
    from_torch,
    serial_train,
    torch_optim_train,
    train_mgrit,
)


def small_task(update, steps: int = 48, examples: int = 42) -> TrainingTask:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(examples, 5, generator=g)
    y = torch.randint(0, 3, (examples,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    # 42 examples in batches of 8: every epoch ends with a batch of 2 (ragged batches)
    return TrainingTask(model, nn.functional.cross_entropy, BatchSchedule.from_loader(x, y, steps, 8, seed=1), update)


UPDATES = [
    SGD(lr=0.1),
    SGD(lr=0.05, momentum=0.9),
    SGD(lr=0.05, momentum=0.9, dampening=0.5),
    SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    Adam(lr=0.01),
    Adam(lr=0.01, weight_decay=0.01, decoupled=True),
]


@pytest.mark.parametrize("update", UPDATES, ids=lambda u: repr(u))
def test_mgrit_equals_torch_optim(update) -> None:
    task = small_task(update)
    ref = torch_optim_train(task, keep="all")
    serial = serial_train(task)
    # the functional update is torch.optim's, step for step
    assert torch.allclose(task.update.weights(serial.trajectory), ref.trajectory, rtol=1e-10, atol=1e-12)
    result = train_mgrit(task, MGRITOptions(cycle="V"))
    assert result.converged
    rel = float((result.weights - ref.weights).norm() / ref.weights.norm())
    assert rel <= 1e-6
    assert float((result.weights - ref.weights).abs().max() / ref.weights.abs().max()) <= 1e-6
    # every point of the trajectory, optimizer state included
    traj = task.update.weights(result.trajectory)
    assert float((traj - ref.trajectory).abs().max()) <= 1e-6 * float(ref.trajectory.abs().max())


def test_schedule_is_the_seeded_dataloader_order() -> None:
    x, y = torch.randn(10, 2), torch.arange(10)
    sched = BatchSchedule.from_loader(x, y, 7, 4, seed=3)
    loader = DataLoader(range(10), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3))
    expected = [b for _ in range(2) for b in loader][:7]
    for i, b in enumerate(expected):
        assert torch.equal(sched.batch(i)[1], y[torch.as_tensor(b)])


def test_from_torch_reads_the_optimizer() -> None:
    p = [nn.Parameter(torch.zeros(2))]
    assert from_torch(torch.optim.SGD(p, lr=0.1, momentum=0.8, nesterov=True)) == SGD(lr=0.1, momentum=0.8, nesterov=True)
    assert from_torch(torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)) == Adam(lr=0.01, weight_decay=0.1, decoupled=True)
    with pytest.raises(ValueError, match="amsgrad"):
        from_torch(torch.optim.Adam(p, lr=0.01, amsgrad=True))


def test_coarse_data_union_and_growth_options_converge_to_the_same_weights() -> None:
    task = small_task(SGD(lr=0.1), steps=32)
    ref = serial_train(task, keep="last").weights
    for options in (MGRITOptions(cycle="V", coarse_data="union"), MGRITOptions(cycle="F", growth=1.25),
                    MGRITOptions(cycle="two-level", coarse_data="full")):
        result = train_mgrit(task, options)
        assert result.converged
        assert float((result.weights - ref).abs().max()) <= 1e-8


def test_frozen_coarse_update_closed_form_and_convergence() -> None:
    from torchpint.training.optim import _frozen_loop

    rule = SGD(lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(3, 5, generator=g, dtype=torch.float64), "buf": torch.randn(3, 5, generator=g, dtype=torch.float64)}
    grad = torch.randn(3, 5, generator=g, dtype=torch.float64)
    first = torch.zeros(3, dtype=torch.bool)
    closed, loop = rule.apply_frozen(state, grad, 0.1, 7, first), _frozen_loop(rule, state, grad, 0.1, 7, first)
    assert torch.allclose(closed["w"], loop["w"], atol=1e-13) and torch.allclose(closed["buf"], loop["buf"], atol=1e-13)
    # momentum: the frozen coarse update converges to the same weights as torch.optim
    task = small_task(SGD(lr=0.05, momentum=0.9), steps=32)
    ref = torch_optim_train(task).weights
    result = train_mgrit(task, MGRITOptions(cycle="V", coarse_update="frozen"))
    assert result.converged and float((result.weights - ref).abs().max()) <= 1e-6 * float(ref.abs().max())
