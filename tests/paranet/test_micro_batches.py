"""``--micro-batches M``: gradient accumulation gives the whole batch's step, in one process and distributed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torchpint.cli.main import main
from torchpint.paranet.train import _pieces
from torchpint.run.checkpoint import Checkpoints
from torchpint.run.loop import restore_state

# no BatchNorm (linear blocks; the coarse networks use GroupNorm): a piece's rows are the whole batch's rows
MLP = ["--model", "mlp", "--depth", "4", "--width", "16", "--dataset", "digits", "--max-train", "64",
       "--max-test", "32", "--batch-size", "32", "--balance", "flops", "--no-progress", "--epochs", "1"]  # fmt: skip
RESNET = ["--model", "resnet11-small", "--dataset", "digits", "--image-size", "8", "--max-train", "96",
          "--max-test", "64", "--batch-size", "32", "--balance", "flops", "--no-progress", "--epochs", "1"]  # fmt: skip


def _train(out: Path, *args: str) -> None:
    assert main(["paranet", "train", "--out", str(out), *args]) == 0


def _checkpoint(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    checkpoints = Checkpoints(out / "paranet" / "checkpoints")
    state = restore_state(checkpoints, checkpoints.find_latest(), 0, merge=True)[0]
    return state["weights"], state["momentum"]


def _history(out: Path) -> list[dict[str, float]]:
    history: list[dict[str, float]] = json.loads((out / "metrics.json").read_text())["runs"]["paranet"]["history"]
    return history


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rel: float) -> float:
    """Every tensor of ``b`` within ``rel`` of ``a``'s norm (integers: equal); returns the largest difference."""
    assert set(a) == set(b), set(a) ^ set(b)
    worst = 0.0
    for name, ta in a.items():
        tb = b[name]
        if not ta.is_floating_point():
            assert torch.equal(ta, tb), name
            continue
        diff = float((ta.double() - tb.double()).norm()) / max(float(ta.double().norm()), 1e-30)
        assert diff <= rel, f"{name}: relative difference {diff:.2e}"
        worst = max(worst, diff)
    return worst


def test_pieces_keep_two_samples_and_match_over_replicas() -> None:
    assert _pieces(32, 1, 1) == 1 and _pieces(32, 1, 3) == 3 and _pieces(32, 2, 8) == 8
    assert _pieces(5, 1, 4) == 2  # a short last batch: fewer pieces, none of 1 sample
    assert _pieces(3, 1, 4) == 1 and _pieces(5, 2, 4) == 1  # shards of 3 and 2: one piece each, on both replicas


def test_accumulated_step_equals_the_whole_batch_step(tmp_path) -> None:
    """One process, no BatchNorm: M = 2 and 3 (pieces of 11, 11, 10) take the M = 1 steps, to rounding.

    Two steps of SGD with momentum and weight decay, through ``train_network``;
    a missing or wrong loss weight (e.g. each piece's mean unweighted: M
    times the gradient) or a step per piece would move the weights far more.
    """
    _train(tmp_path / "m1", *MLP)
    ref_state, ref_momentum = _checkpoint(tmp_path / "m1")
    ref_history = _history(tmp_path / "m1")
    for m in (2, 3):
        out = tmp_path / f"m{m}"
        _train(out, *MLP, "--micro-batches", str(m))
        state, momentum = _checkpoint(out)
        _assert_same(ref_state, state, 1e-6)
        _assert_same(ref_momentum, momentum, 1e-5)
        history = _history(out)
        assert history[0]["train_loss"] == pytest.approx(ref_history[0]["train_loss"], rel=1e-6)
        assert history[0]["train_accuracy"] == ref_history[0]["train_accuracy"]  # every sample counted once
        assert history[0]["test_loss"] == pytest.approx(ref_history[0]["test_loss"], rel=1e-5)


@pytest.mark.slow
def test_distributed_micro_batches_equal_one_process(tmp_path, capsys) -> None:
    """``--nproc 2 --micro-batches 2`` (BatchNorm over each piece on both sides) ends where one process does.

    Each worker accumulates over the pieces and steps once, after the last
    piece's backward pass; a step per piece would leave it elsewhere.
    """
    _train(tmp_path / "dist", *RESNET, "--nproc", "2", "--micro-batches", "2")
    assert "micro-batches=2" in capsys.readouterr().out
    _train(tmp_path / "one", *RESNET, "--micro-batches", "2")
    out = capsys.readouterr().out
    assert "parareal N=2 K=1, 2 micro-batches" in out
    a, b = _history(tmp_path / "dist"), _history(tmp_path / "one")
    for key in ("train_loss", "test_loss"):
        assert a[0][key] == pytest.approx(b[0][key], rel=1e-4)
    state_one, _ = _checkpoint(tmp_path / "one")
    state_dist, _ = _checkpoint(tmp_path / "dist")
    _assert_same(state_one, state_dist, 1e-4)


@pytest.mark.slow
def test_replicas_with_micro_batches_equal_the_whole_batch(tmp_path) -> None:
    """2 x 2 processes, M = 2, batches of 31: shards of 16 and 15, pieces of 8, 8 and 8, 7 (MLP, no BatchNorm).

    The replicas' averaged, accumulated gradient is the whole batch's: the
    weights equal a one-process run without micro-batches.
    """
    args = [*MLP, "--batch-size", "31", "--max-train", "62"]
    _train(tmp_path / "rep", *args, "--subnets", "2", "--replicas", "2", "--micro-batches", "2")
    _train(tmp_path / "one", *args)
    a, b = _history(tmp_path / "rep"), _history(tmp_path / "one")
    assert a[0]["train_loss"] == pytest.approx(b[0]["train_loss"], rel=1e-4)
    state_one, momentum_one = _checkpoint(tmp_path / "one")
    state_rep, momentum_rep = _checkpoint(tmp_path / "rep")
    _assert_same(state_one, state_rep, 1e-4)
    _assert_same(momentum_one, momentum_rep, 1e-4)
