"""Gradients of the parareal network over 2 and 3 processes equal the one-process network's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchpint.run.launch import run_workers
from torchpint.testing.paranet import (
    GradientSpec,
    distributed_gradients,
    distributed_sgd_step,
    gradient_case,
    replica_gradients_and_step,
    serial_gradients,
    serial_sgd_step,
)

MLP = {"model": "mlp", "model_kw": {"in_features": 12, "hidden": 8, "depth": 4}, "input_shape": (12,)}
F64 = {"dtype": "float64"}
CASES = {
    2: [GradientSpec(subnets=2, iterations=1), GradientSpec(subnets=2, iterations=1, **F64),
        GradientSpec(subnets=2, iterations=2, **F64),
        GradientSpec(model="vgg16-small", input_shape=(3, 32, 32), subnets=2, iterations=1, **F64)],
    3: [GradientSpec(subnets=3, iterations=1), GradientSpec(subnets=3, iterations=1, **F64),
        GradientSpec(subnets=3, iterations=2, **F64), GradientSpec(subnets=3, iterations=3, **F64),
        GradientSpec(**MLP, subnets=3, iterations=2, **F64),
        GradientSpec(model="resnet1d", model_kw={"num_blocks": 4, "channels": 6, "in_length": 20},
                     input_shape=(1, 20), subnets=3, iterations=1, **F64)],
}  # fmt: skip


def _compare(ref: dict[str, torch.Tensor], got: dict[str, np.ndarray], dtype: str) -> float:
    """Largest relative difference over parameters; every parameter is checked against 1e-5.

    In float64 the check is per parameter.  A gradient that is zero in
    exact arithmetic (the output bias of a coarse network that only appears
    as C(a) - C(b)) is rounding noise in both computations, so parameters
    whose gradient norm is below 1e-9 of the largest only have to stay
    below that floor.  In float32 the coarse networks' gradients are such
    differences of nearly equal terms and lose digits to cancellation
    whatever the order of the sums, so the float32 case measures each
    parameter's difference against its module's gradient norm.
    """
    assert set(got) == set(ref), set(got) ^ set(ref)
    scale = max(float(g.norm()) for g in ref.values())
    module_norm: dict[str, float] = {}
    for name, g in ref.items():
        module = name.rsplit(".", 1)[0]
        module_norm[module] = float(np.hypot(module_norm.get(module, 0.0), float(g.norm())))
    worst = 0.0
    for name, g in ref.items():
        diff = float((torch.as_tensor(got[name]) - g).norm())
        if dtype == "float64" and float(g.norm()) < 1e-9 * scale:
            assert float(np.linalg.norm(got[name])) < 1e-9 * scale, name
            continue
        denom = float(g.norm()) if dtype == "float64" else max(float(g.norm()), module_norm[name.rsplit(".", 1)[0]])
        rel = diff / denom
        assert rel < 1e-5, f"{name}: relative difference {rel:.2e}"
        worst = max(worst, rel)
    return worst


@pytest.mark.parametrize("nproc", [2, 3])
def test_gradients_equal_one_process(nproc) -> None:
    specs = CASES[nproc]
    results = run_workers(distributed_gradients, nproc, (specs,), timeout_s=100)
    for i, spec in enumerate(specs):
        loss, ref = serial_gradients(spec)
        got: dict[str, np.ndarray] = {}
        for rank in range(nproc):
            names = set(results[rank][i][1])
            assert not names & set(got), "a parameter lives on two ranks"
            if rank > 0:  # a worker holds its own sub-network and nothing else
                assert all(n.startswith(f"fine_subnets.{rank}.") for n in names)
            got.update(results[rank][i][1])
        assert results[0][i][0] == pytest.approx(loss, rel=1e-6)
        _compare(ref, got, spec.dtype)


@pytest.mark.slow
def test_workers_step_right_after_their_backward() -> None:
    """``hub(x, lr=...)``: each worker takes its SGD step inside the pass; the result is one-process SGD."""
    spec = GradientSpec(subnets=3, iterations=1, **F64)
    results = run_workers(distributed_sgd_step, 3, (spec, 0.5), timeout_s=100)
    ref = serial_sgd_step(spec, 0.5)
    start, _, _ = gradient_case(spec)
    got: dict[str, np.ndarray] = {}
    for rank, res in enumerate(results):
        assert res.pop("_cleared", True), f"rank {rank} kept its gradients after the step"
        got.update(res)
    assert set(got) == set(ref)
    moved = 0
    for name, p in start.named_parameters():
        np.testing.assert_allclose(got[name], ref[name].numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
        moved += not torch.equal(p.detach(), ref[name])
    assert moved > len(ref) // 2  # the step really changed the weights, workers' included


@pytest.mark.slow
def test_data_parallel_replicas_equal_one_process_on_the_whole_batch() -> None:
    """World = N x R = 2 x 2: each replica takes half the batch, averages gradients with the other.

    The model has no BatchNorm (MLP; the coarse networks use GroupNorm), so
    each replica's forward pass on its shard is exactly the whole batch's
    rows: with BatchNorm the statistics would be per shard and the
    gradients those of a different function.
    """
    subnets, replicas, lr = 2, 2, 0.5
    spec = GradientSpec(**MLP, subnets=subnets, iterations=1, batch=8, **F64)
    results = run_workers(replica_gradients_and_step, subnets * replicas, (spec, lr, replicas), timeout_s=100)
    _, ref = serial_gradients(spec)
    ref_step = serial_sgd_step(spec, lr)
    for r in range(replicas):
        got: dict[str, np.ndarray] = {}
        for part in range(subnets):
            got.update(results[r * subnets + part][0][1])
        _compare(ref, got, spec.dtype)  # the whole batch's gradient, on every replica
    for part in range(subnets):
        first = results[part][1]
        for r in range(1, replicas):
            other = results[r * subnets + part][1]
            assert set(other) == set(first)
            for name, value in first.items():  # the same averaged gradient gives the same step, bit for bit
                assert np.array_equal(value, other[name]), name
        for name, value in first.items():
            if name != "_cleared":
                np.testing.assert_allclose(value, ref_step[name].numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
