"""``torchpint layer-parallel train``: outputs, the serial comparison, distributed training, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from torchpint.cli.main import main

TINY = ["layer-parallel", "train", "--layers", "8", "--levels", "2", "--cf", "2", "--epochs", "1", "--width", "2",
        "--batch", "256", "--no-progress", "--json"]


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_train_writes_metrics_plot_model_and_matches_serial(capfd, tmp_path, nproc) -> None:
    assert main([*TINY, "--nproc", str(nproc), "--out", str(tmp_path)]) == 0
    out = capfd.readouterr().out  # the workers' lines too
    assert "layer-parallel: training loss" in out and "serial:         training loss" in out
    assert "[layer-parallel] epoch 1/1: train loss" in out  # the summary line, also without progress bars
    summary = last_json(out)
    assert summary["world_size"] == nproc and summary["version"]
    # Trained to the MGRIT tolerance, the layer-parallel network follows serial training.
    assert summary["max_parameter_difference"] < 1e-7
    assert summary["final_loss"] == pytest.approx(summary["final_loss_serial"], rel=1e-9)
    assert summary["test_accuracy"] == summary["test_accuracy_serial"] > 0.3
    assert summary["forward_iterations_mean"] >= 1 and summary["backward_iterations_mean"] >= 1
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["batch_losses"]) == len(metrics["batch_losses_serial"]) == 6
    assert metrics["batch_losses"] == pytest.approx(metrics["batch_losses_serial"], rel=1e-9)
    assert (tmp_path / "metrics.csv").read_text().startswith("run,epoch,train_loss")
    assert (tmp_path / "curves.png").stat().st_size > 0
    model = torch.load(tmp_path / "model.pt", weights_only=True)  # the whole network, loadable without code
    assert any(k.startswith("layers.7.") for k in model) and any(k.startswith("closing.") for k in model)


@pytest.mark.slow
def test_layers_x_data_parallel_training_matches_serial(capsys, tmp_path) -> None:
    """2 layer ranks x 2 data groups: each group trains on half of every batch; the whole-batch gradients
    (one all-reduce per step) keep the copies identical and equal to serial training.  Resumed for a
    second epoch, the copies of data group 1 (which write no checkpoint) take group 0's weights."""
    assert main([*TINY, "--nproc", "4", "--data-parallel", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "(2 layer ranks x 2 data groups)" in out
    summary = last_json(out)
    assert summary["config"]["data_parallel"] == 2
    assert summary["max_parameter_difference"] < 1e-7
    assert summary["final_loss"] == pytest.approx(summary["final_loss_serial"], rel=1e-9)
    assert summary["test_accuracy"] == summary["test_accuracy_serial"]
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "epoch_0001").iterdir()) == ["meta.pt", "part0.pt", "part1.pt"]
    assert main([*TINY, "--nproc", "4", "--data-parallel", "2", "--out", str(tmp_path), "--resume", "--epochs", "2"]) == 0
    resumed = last_json(capsys.readouterr().out)
    assert resumed["resumed_from_epoch"] == 1 and resumed["max_parameter_difference"] < 1e-7
    assert resumed["final_loss"] == pytest.approx(resumed["final_loss_serial"], rel=1e-9)


def test_mlp_without_serial(capsys, tmp_path) -> None:
    args = [*TINY, "--arch", "mlp", "--width", "8", "--levels", "1", "--no-serial", "--out", str(tmp_path)]
    assert main(args) == 0
    summary = last_json(capsys.readouterr().out)
    assert "test_accuracy_serial" not in summary and summary["forward_iterations_mean"] == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layers", "30", "--levels", "3", "--cf", "4"], "layers=30 is not divisible as the coarsening needs"),
        (["--layers", "4", "--levels", "1", "--nproc", "5"], r"more processes (5) than layers (4)"),
        (["--nproc", "0"], "--nproc must be >= 1"),
        (["--lr", "0"], "lr must be > 0"),
        (["--epochs", "0"], "epochs must be >= 1"),
        (["--relax", "CF"], "unknown relaxation"),
        (["--dataset", "nope"], "unknown data set 'nope'"),
        (["--nproc", "4", "--data-parallel", "3"], "3 data-parallel groups do not divide the 4 processes"),
        (["--nproc", "4", "--data-parallel", "4", "--batch", "2"], "a batch of 2 examples cannot be split over 4"),
        (["--nproc", "2", "--data-parallel", "2", "--batch", "1436"], "the last batch of an epoch has 1 examples"),
        (["--width", "0"], "width must be >= 1"),
        (["--layers", "0"], "layers must be >= 1"),
        (["--levels", "0"], "levels must be >= 1"),
        (["--cf", "1"], "cf must be >= 2"),
        (["--T", "0"], "T must be > 0"),
        (["--T", "inf"], "T must be > 0"),
        (["--fwd-tol", "-1"], "fwd-tol must be a finite number >= 0"),
        (["--bwd-tol", "nan"], "bwd-tol must be a finite number >= 0"),
        (["--fwd-max-iter", "0"], "fwd-max-iter must be >= 1"),
        (["--bwd-max-iter", "0"], "bwd-max-iter must be >= 1"),
        (["--batch", "0"], "batch must be >= 1"),
        (["--momentum", "1"], "momentum must be in [0, 1)"),
        (["--lr", "nan"], "lr must be > 0"),
        (["--seed", "-1"], "seed must be >= 0"),
        (["--data-parallel", "0"], "data-parallel must be >= 1"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, tmp_path, args, message) -> None:
    assert main(["layer-parallel", "train", "--no-progress", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_warm_start_and_final_relax_flags(capsys, tmp_path) -> None:
    """--warm-start starts each solve from the previous batch's solution: training still follows serial
    training to the MGRIT tolerance, with no more iterations per batch than cold starts; the settings
    are recorded and a resume with another value is refused."""
    args = [*TINY, "--arch", "mlp", "--width", "6", "--epochs", "2", "--no-serial"]
    assert main([*args, "--out", str(tmp_path / "cold")]) == 0
    cold = last_json(capsys.readouterr().out)
    assert main([*args, "--warm-start", "--out", str(tmp_path / "warm")]) == 0
    warm = last_json(capsys.readouterr().out)
    assert warm["config"]["warm_start"] and not cold["config"]["warm_start"] and warm["config"]["final_relax"]
    assert warm["final_loss"] == pytest.approx(cold["final_loss"], rel=1e-7)
    assert warm["forward_iterations_mean"] <= cold["forward_iterations_mean"]
    assert warm["backward_iterations_mean"] <= cold["backward_iterations_mean"]
    assert main([*args, "--out", str(tmp_path / "warm"), "--resume", "--no-warm-start"]) == 2
    assert "warm_start (True there, False now)" in capsys.readouterr().err
