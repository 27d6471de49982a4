"""The paper's XOR results (Schroder 2017, Tables): iterations within 2, weights equal serial training's."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from torchpint.training import (
    MGRITOptions,
    TaskSpec,
    build_task,
    count_levels,
    max_difference,
    potential_speedup,
    sequential_cost,
    serial_train,
    torch_optim_train,
    train_mgrit,
)
from torchpint.training.paper import PAPER_TABLES
from torchpint.training.tasks import xor_weights


def test_xor_initial_weights_are_the_numpy_example() -> None:
    np.random.seed(1)
    syn0 = 2 * np.random.random((3, 4)) - 1
    syn1 = 2 * np.random.random((4, 1)) - 1
    w0, w1 = xor_weights()
    assert np.array_equal(w0.numpy(), syn0) and np.array_equal(w1.numpy(), syn1)


def test_xor_step_is_the_numpy_example() -> None:
    """Ten full-batch steps equal the 11-line NumPy loop (alpha = 1)."""
    x = np.array([[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=float)
    y = np.array([[0, 1, 1, 0]], dtype=float).T
    syn0, syn1 = (w.numpy().copy() for w in xor_weights())
    for _ in range(10):
        l1 = 1 / (1 + np.exp(-(x @ syn0)))
        l2 = 1 / (1 + np.exp(-(l1 @ syn1)))
        l2_delta = (y - l2) * (l2 * (1 - l2))
        l1_delta = l2_delta @ syn1.T * (l1 * (1 - l1))
        syn1 += l1.T @ l2_delta
        syn0 += x.T @ l1_delta
    task, _ = build_task(TaskSpec("xor", steps=10))
    w = serial_train(task, keep="last").weights
    assert torch.allclose(w, torch.from_numpy(np.concatenate([syn0.ravel(), syn1.ravel()])), rtol=0, atol=1e-13)


@pytest.mark.parametrize("table", [1, 2, 3])
@pytest.mark.parametrize("n", [100, 200])
def test_paper_iterations_and_serial_weights(table: int, n: int) -> None:
    paper = PAPER_TABLES[table]
    paper_iters = dict((row[0], row[1]) for row in paper.rows())[n]
    task, options = build_task(TaskSpec("xor", steps=n, solver=paper.solver, cycle=paper.cycle,
                                        alpha_b=paper.alpha_b, alpha_max=paper.alpha_max))
    result = train_mgrit(task, options)
    assert result.converged and result.residuals[-1] <= 1e-9 * math.sqrt(n)
    assert abs(result.iterations - paper_iters) <= 2, (result.iterations, paper_iters)
    assert 0 < result.rho < 0.5
    serial = serial_train(task)
    assert max_difference(result.weights, serial.weights) <= 1e-8
    assert max_difference(result.trajectory, serial.trajectory) <= 1e-8
    # ... and serial training with torch.optim.SGD is the same run
    assert max_difference(result.weights, torch_optim_train(task).weights) <= 1e-8


def test_levels_and_coarse_learning_rates() -> None:
    # N = 100 coarsens 100 -> 50 -> 25 -> 12 -> 6 (partial last C-intervals, as XBraid)
    assert count_levels(100, "V") == 5 and count_levels(6400, "F") == 11 and count_levels(100, "two-level") == 2
    task, options = build_task(TaskSpec("xor", steps=100, solver="1", cycle="F", alpha_b=0.5, alpha_max=8.0))
    result = train_mgrit(task, options)
    assert result.levels == 5 and result.level_steps == [100, 50, 25, 12, 6]
    assert result.lrs == [0.5, 1.0, 2.0, 4.0, 8.0]
    task, options = build_task(TaskSpec("xor", steps=64, solver="1", cycle="V", growth=1.25, alpha_max=1.5))
    assert train_mgrit(task, options).lrs == [1.0, 1.25, 1.5, 1.5]
    task, options = build_task(TaskSpec("xor", steps=64, solver="naive", cycle="V"))
    assert set(train_mgrit(task, options).lrs) == {1.0}


def test_potential_speedup_model() -> None:
    assert sequential_cost(6, "V", 5, 100) == 6 * (17 + 8 * 3)
    assert sequential_cost(5, "F", 4, 100) == 5 * (17 + 25 + 33)
    assert sequential_cost(6, "two-level", 2, 100) == 6 * (7 + 50)
    assert potential_speedup(6400, 6, "V", 11) == pytest.approx(6400 / (6 * (17 + 72)))


def test_store_c_points_only() -> None:
    task, options = build_task(TaskSpec("xor", steps=101, solver="1", cycle="V", store="c"))
    result = train_mgrit(task, options)
    assert result.t.tolist() == list(range(0, 101, 2))  # the last point, 101, is an F-point
    assert max_difference(result.weights, serial_train(task, keep="last").weights) <= 1e-8
    assert isinstance(options, MGRITOptions)


def test_coarse_levels_keep_only_c_points_when_asked() -> None:
    """Same iterations and weights, coarse memory down from 2 to 1.5 states per coarse point."""
    spec = TaskSpec("xor", steps=400, solver="1", cycle="V", alpha_b=0.5)
    task, full_options = build_task(spec)
    lean_task, lean_options = build_task(dataclasses.replace(spec, coarse_storage="c"))
    full, lean = train_mgrit(task, full_options), train_mgrit(lean_task, lean_options)
    assert full.levels >= 4  # intermediate levels exist
    assert lean.iterations == full.iterations
    assert lean.residuals == pytest.approx(full.residuals, rel=1e-8)
    assert max_difference(lean.weights, full.weights) <= 1e-12
    assert lean.memory["coarse_bytes"] < 0.8 * full.memory["coarse_bytes"]
