"""Bad input and failing runs give clear errors: alpha <= 0, N < 2, divergence, NaN, memory."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from torchpint.training import (
    SGD,
    Adam,
    BatchSchedule,
    DivergenceError,
    MemoryLimitError,
    MGRITOptions,
    NonFiniteWeightsError,
    TaskSpec,
    TrainingConfigError,
    TrainingTask,
    build_task,
    memory_estimate,
    parse_memory,
    serial_train,
    train_mgrit,
)


@pytest.mark.parametrize("lr", [0.0, -1.0, math.nan, math.inf])
def test_learning_rate_must_be_positive(lr: float) -> None:
    with pytest.raises(TrainingConfigError, match="learning rate must be"):
        SGD(lr=lr)
    with pytest.raises(TrainingConfigError, match="learning rate must be"):
        Adam(lr=lr)
    with pytest.raises(TrainingConfigError, match="alpha_b must be > 0"):
        build_task(TaskSpec("xor", steps=8, alpha_b=lr if lr <= 0 or math.isnan(lr) else -lr))


def test_alpha_max_and_growth_are_checked() -> None:
    with pytest.raises(TrainingConfigError, match="alpha_max must be > 0"):
        build_task(TaskSpec("xor", steps=8, alpha_max=0.0))
    with pytest.raises(TrainingConfigError, match="growth"):
        MGRITOptions(growth=0.5).validate()


@pytest.mark.parametrize("n", [1, 0, -3])
def test_at_least_two_steps(n: int) -> None:
    with pytest.raises(TrainingConfigError, match="at least 2 steps"):
        build_task(TaskSpec("xor", steps=n))


def test_divergence_stops_after_three_growing_iterations() -> None:
    task, options = build_task(TaskSpec("xor", steps=128, solver="2", cycle="V", alpha_b=10.0, alpha_max=1000.0))
    with pytest.raises(DivergenceError, match=r"grew in 3 iterations in a row") as info:
        train_mgrit(task, options)
    r = info.value.residuals
    assert len(r) < 10 and r[-1] > r[-2] > r[-3] > r[-4]


def test_nan_weights_name_the_step() -> None:
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    y = torch.randn(16, 1, generator=torch.Generator().manual_seed(1))
    x[13, 0] = math.nan  # example 13 is in the batch of step 6 only
    batches = [torch.tensor([2 * i, 2 * i + 1]) for i in range(8)] * 2
    torch.manual_seed(0)
    task = TrainingTask(nn.Linear(3, 1), nn.functional.mse_loss, BatchSchedule.from_batches(x, y, batches), SGD(lr=0.1))
    with pytest.raises(NonFiniteWeightsError, match=r"NaN/Inf weights at training step 6 -> 7 \(weights w_7\)") as info:
        train_mgrit(task, MGRITOptions(cycle="two-level"))
    assert info.value.step == 7 and info.value.level == 0
    with pytest.raises(NonFiniteWeightsError, match=r"training step 6 -> 7"):
        serial_train(task)


def test_memory_refusal_before_allocation() -> None:
    task, options = build_task(TaskSpec("addition", steps=6400, max_memory=parse_memory("100M")))
    est = memory_estimate(task, options)
    assert est.finest_bytes == 6401 * 12032 * 8
    with pytest.raises(MemoryLimitError, match=r"needs about .* more than the 100\.0 MiB allowed"):
        train_mgrit(task, options)
    with pytest.raises(MemoryLimitError, match="cannot read"):
        parse_memory("lots")
    assert parse_memory("1.5G") == int(1.5 * (1 << 30)) and parse_memory("512M") == 512 << 20


def test_bad_options() -> None:
    with pytest.raises(TrainingConfigError, match="cycle must be"):
        MGRITOptions(cycle="W").validate()
    with pytest.raises(TrainingConfigError, match="coarse data"):
        MGRITOptions(coarse_data="random").validate()
    task, options = build_task(TaskSpec("xor", steps=8))
    twenty_ranks = SimpleNamespace(rank=0, size=20)  # refused before any message
    with pytest.raises(TrainingConfigError, match="20 processes are more than the 9 time points"):
        train_mgrit(task, options, comm=twenty_ranks)
