"""Layer-parallel forward and backward passes against the serial network's autograd.

One level: the serial pass, pipelined over the ranks: equal to rounding (1e-12).  Several
levels iterated to a tight tolerance: equal to 1e-6 relative.  Output, input gradient and
the gradient of every parameter (each on the rank that owns it), for 1, 2 and 3 processes.
"""

from __future__ import annotations

import pytest
import torch

from torchpint.run.launch import run_workers
from torchpint.testing.layer_parallel import (
    CheckCase,
    check_worker,
    compare,
    parallel_gradients,
    serial_gradients,
)

# one xdist worker runs the whole module: its module-scoped fixture is built once
pytestmark = pytest.mark.xdist_group("layerpar/test_exactness.py")

CASES = [
    # exact: one level (the serial pass), MLP and conv step layers
    CheckCase(layers=6, levels=1),
    CheckCase(layers=4, levels=1, arch="conv", width=2),
    # multilevel to tight tolerance: two levels, FCF, V-cycle, nested iteration
    CheckCase(layers=16, levels=2, cf=4, T=4.0, width=6),
    # three levels, F-cycle: coarse layers borrowed across ranks (3 ranks: rank 2 steps with layer 4 of rank 1)
    CheckCase(layers=12, levels=3, cf=2, cycle="F", T=2.0),
    # 64 layers, three levels, F-relaxation, no nested iteration: 13+ iterations, not finite termination
    CheckCase(layers=64, levels=3, cf=4, T=4.0, relax="F", nested=False, tol=1e-11),
    # conv steps, two levels, F(CF)^2
    CheckCase(layers=8, levels=2, cf=4, relax="F(CF)^2", arch="conv", width=2, T=2.0),
    # without the final relaxation: the backward pass linearises at MGRIT's last iterate
    CheckCase(layers=16, levels=2, cf=4, T=4.0, width=6, final_relax=False),
    # warm start from a pass on another batch of the same shape ...
    CheckCase(layers=12, levels=3, cf=2, T=2.0, warm_start=True, warm_up_batch=4),
    # ... and of another shape: a cold start
    CheckCase(layers=12, levels=3, cf=2, T=2.0, warm_start=True, warm_up_batch=3),
]
WARM, COLD = 7, 8
EXACT = [c.levels == 1 for c in CASES]
POISONED = [
    (CheckCase(layers=8, levels=2, cf=2), "layer", 5),
    (CheckCase(layers=8, levels=1), "layer", 2),
    (CheckCase(layers=8, levels=2, cf=4), "loss", 0),
]


@pytest.fixture(scope="module")
def serial():
    return [serial_gradients(c) for c in CASES]


@pytest.fixture(scope="module")
def one_process():
    return [parallel_gradients(CASES)]


def _check(parallel_ranks, serial) -> None:
    for case, exact, diff in zip(CASES, EXACT, compare(parallel_ranks, serial)):
        bound = 1e-12 if exact else 1e-6
        assert not diff["missing"], (case, diff["missing"])  # every parameter gradient is computed ...
        assert not diff["foreign"], (case, diff["foreign"])  # ... only on its owner
        assert diff["out"] <= bound and diff["x_grad"] <= bound and diff["grads"] <= bound, (case, diff)


def _check_warm_starts(results) -> None:
    for phase in ("forward", "backward"):
        assert not results[WARM]["warm_up_stats"][phase]["warm"] and results[WARM]["stats"][phase]["warm"]
        assert not results[COLD]["warm_up_stats"][phase]["warm"] and not results[COLD]["stats"][phase]["warm"]


def test_one_process(one_process, serial) -> None:
    _check(one_process, serial)
    for case, res in zip(CASES, one_process[0]):
        if case.levels > 1:  # the multilevel cases really iterate, and converge
            assert res["stats"]["forward"]["converged"] and res["stats"]["backward"]["converged"]
    assert one_process[0][4]["stats"]["forward"]["iterations"] >= 8
    _check_warm_starts(one_process[0])


@pytest.mark.parametrize("nproc", [2, 3])
def test_processes(nproc, one_process, serial) -> None:
    ranks = run_workers(check_worker, nproc, (CASES, POISONED), timeout_s=240)
    grads = [r["grads"] for r in ranks]
    _check(grads, serial)
    # Ownership: contiguous blocks, every layer on exactly one rank.
    owned = [layer for rank in grads for layer in rank[0]["owned_layers"]]
    assert owned == list(range(CASES[0].layers))
    for rank in grads:
        _check_warm_starts(rank)
    # A correct MGRIT has the same residual history for any number of processes.
    for c, case in enumerate(CASES):
        ref = one_process[0][c]["stats"]
        for rank in grads:
            for phase in ("forward", "backward"):
                assert rank[c]["stats"][phase]["iterations"] == ref[phase]["iterations"], (case, phase)
                assert rank[c]["stats"][phase]["residuals"] == pytest.approx(
                    ref[phase]["residuals"], rel=1e-9, abs=1e-13), (case, phase)
    # Non-finite activations: every rank stops with the same message, naming the layer.
    for (case, what, k), *per_rank in zip(POISONED, *[r["errors"] for r in ranks]):
        messages = {e["message"] for e in per_rank}
        assert len(messages) == 1 and None not in messages, (case, what, messages)
        if what == "layer":
            assert all(e["layer"] == k for e in per_rank)
            assert f"layer {k} (of {case.layers})" in messages.pop()
        else:
            assert "gradient of the loss" in messages.pop()


def test_step_modes_agree() -> None:
    """vmap over stacked weights (the GPU path) and the per-layer loop give the same answer."""
    case = CheckCase(layers=8, levels=2, cf=2, arch="conv", width=2)
    results = {}
    for mode in ("vmap", "loop"):
        from torchpint.testing.layer_parallel import build_check_network, check_data

        net = build_check_network(case)
        net.step_mode = mode
        x, _ = check_data(case)
        out = net(x)
        (out ** 2).sum().backward()
        results[mode] = (out.detach(), [p.grad.clone() for p in net.parameters()])
    torch.testing.assert_close(results["vmap"][0], results["loop"][0], rtol=1e-12, atol=1e-14)
    for a, b in zip(results["vmap"][1], results["loop"][1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
