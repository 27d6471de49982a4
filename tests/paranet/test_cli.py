"""``torchpint paranet`` in-process: info, train, resume, faults and bad input."""

from __future__ import annotations

import json
import time

import pytest
import torch

from torchpint.cli.main import main
from torchpint.run.checkpoint import Checkpoints
from torchpint.run.loop import restore_state

TINY = ["--model", "resnet11-small", "--dataset", "digits", "--image-size", "8", "--max-train", "96",
        "--max-test", "64", "--batch-size", "32", "--balance", "flops", "--no-progress"]  # fmt: skip


def _train(out, *extra) -> int:
    return main(["paranet", "train", *TINY, "--out", str(out), *extra])


def latest(out):
    """The newest complete checkpoint of the parareal network in run folder ``out``."""
    return Checkpoints(out / "paranet" / "checkpoints").find_latest()


def merged(out) -> dict:
    """Weights and momentum of the whole network, merged from the newest checkpoint's parts."""
    return restore_state(Checkpoints(out / "paranet" / "checkpoints"), latest(out), 0, merge=True)[0]


def test_info_prints_split_shapes_and_counts(capsys) -> None:
    assert main(["paranet", "info", "--model", "resnet20-small", "--subnets", "3"]) == 0
    text = capsys.readouterr().out
    assert "split points" in text and "(16, 32, 32)" in text and "coarse/sub" in text and "balance by flops" in text
    assert main(["paranet", "info", "--model", "mlp", "--depth", "4", "--subnets", "2", "--K", "2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["subnets"] == 2 and info["iterations"] == 2 and info["input_shape"] == [64]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--subnets", "9"], "larger than the model's 3 blocks"),
        (["--subnets", "0"], "--subnets must be >= 1"),
        (["--K", "0"], "--K must be >= 1"),
        (["--model", "resnet12"], "depth must be 9n+2"),
        (["--model", "alexnet"], "unknown model 'alexnet'"),
        (["--dataset", "imagenet"], "unknown data set 'imagenet'"),
        (["--nproc", "3"], "--nproc 3 cannot be used: it must be 1 (one process) or N=2"),
        (["--replicas", "2", "--nproc", "2"], "--nproc 2 cannot be used: with --replicas 2 it must be N x R = 2 x 2 = 4"),
        (["--width", "0"], "--width must be >= 1, got 0"),
        (["--depth", "0", "--model", "mlp"], "--depth must be >= 1, got 0"),
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--lr", "nan"], "--lr must be > 0, got nan"),
        (["--momentum", "1"], "--momentum must be in [0.0, 1.0), got 1.0"),
        (["--weight-decay", "-1"], "--weight-decay must be >= 0.0, got -1.0"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
        (["--max-train", "1"], "--max-train must be >= 2, got 1"),
        (["--inject-fault", "boom"], "--inject-fault must be"),
        (["--replicas", "0"], "--replicas must be >= 1"),
        (["--micro-batches", "0"], "--micro-batches must be >= 1, got 0"),
        (["--micro-batches", "17"], "--micro-batches must be <= 16: each micro-batch of the 32-sample batch needs >= 2"),
        (["--replicas", "2", "--micro-batches", "9"], "--micro-batches must be <= 8: each micro-batch of the 16-sample shard"),
        (["--dataset", "cifar10", "--data-root", "/nonexistent"], "cifar-10-batches-py"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, capsys, args, message) -> None:
    assert _train(tmp_path / "run", "--epochs", "1", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("torchpint: error:") and message in err, err
    assert main(["paranet", "info", "--model", "resnet11-small", "--subnets", "4"]) == 2
    assert "larger than the model's 3 blocks" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize(("args", "message"), [(["--num-classes", "0"], "--num-classes must be >= 1, got 0"),
                                               (["--width", "0"], "--width must be >= 1, got 0"),
                                               (["--coarse-width", "0"], "--coarse-width must be >= 1, got 0")])
def test_info_bad_input_is_one_line(capsys, args, message) -> None:
    assert main(["paranet", "info", "--model", "resnet20-small", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("torchpint: error:") and message in err and err.count("\n") == 1, err


def test_train_compare_writes_metrics_csv_and_curves(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert _train(out, "--epochs", "2", "--compare") == 0
    text = capsys.readouterr().out
    assert "original" in text and "parareal N=2 K=1" in text and "coarse-network overhead" in text
    results = json.loads((out / "metrics.json").read_text())
    assert results["version"] and results["world_size"] == 1 and 0.0 <= results["test_accuracy"] <= 1.0
    assert set(results["runs"]) == {"paranet", "original"}
    assert len(results["runs"]["paranet"]["history"]) == 2
    assert results["runs"]["paranet"]["params"] > results["runs"]["original"]["params"]
    assert "speedup_per_epoch" in results["comparison"]
    assert (out / "metrics.csv").read_text().count("\n") == 5
    assert (out / "curves.png").stat().st_size > 1000
    # the whole parareal network in one file, loadable into the class that made it
    from torchpint.paranet.train import TrainConfig, build_paranet

    cfg = TrainConfig(**{k: v for k, v in results["config"].items() if k in TrainConfig.__dataclass_fields__})
    build_paranet(cfg).load_state_dict(torch.load(out / "model.pt", weights_only=True))
    assert (out / "original_model.pt").is_file()
    # an existing run is not overwritten by accident
    before = (out / "metrics.json").read_bytes()
    assert _train(out, "--epochs", "2") == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "metrics.json").read_bytes() == before


def test_resume_continues_exactly(tmp_path) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _train(straight, "--epochs", "3") == 0
    assert _train(split, "--epochs", "3", "--inject-fault", "nan:2:1") == 1  # stops in epoch 2 ...
    assert latest(split).index == 1  # ... keeping epoch 1
    assert _train(split, "--epochs", "3", "--resume") == 0
    a = json.loads((straight / "metrics.json").read_text())["runs"]["paranet"]["history"]
    b = json.loads((split / "metrics.json").read_text())["runs"]["paranet"]["history"]
    for ha, hb in zip(a, b, strict=True):
        assert {k: v for k, v in ha.items() if "seconds" not in k} == {k: v for k, v in hb.items() if "seconds" not in k}
    a, b = merged(straight), merged(split)
    for kind in ("weights", "momentum"):
        for name in a[kind]:
            assert torch.equal(a[kind][name], b[kind][name]), name


def test_non_finite_loss_stops_and_keeps_the_checkpoint(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert _train(out, "--epochs", "2", "--inject-fault", "nan:2:1") == 1
    err = capsys.readouterr().err
    assert "loss became nan at epoch 2, step 1" in err and "epoch_0001" in err and "--resume" in err, err
    assert latest(out).index == 1


@pytest.mark.slow
def test_distributed_run_killed_worker_and_resume(tmp_path, capfd) -> None:
    """2 processes: a worker killed mid-epoch stops the run within seconds; --resume finishes it.

    The resumed distributed run matches the one-process run to rounding.
    """
    out, ref = tmp_path / "dist", tmp_path / "one"
    start = time.monotonic()
    assert _train(out, "--epochs", "2", "--nproc", "2", "--inject-fault", "kill:2:2:1") == 1
    elapsed = time.monotonic() - start
    err = capfd.readouterr().err
    assert "worker 1 of 2 died" in err, err
    assert elapsed < 60
    assert latest(out).index == 1
    assert _train(out, "--epochs", "2", "--nproc", "2", "--resume") == 0
    assert "resumed from" in capfd.readouterr().out
    assert _train(ref, "--epochs", "2") == 0
    a = json.loads((out / "metrics.json").read_text())["runs"]["paranet"]["history"]
    b = json.loads((ref / "metrics.json").read_text())["runs"]["paranet"]["history"]
    assert [h["epoch"] for h in a] == [1, 2]
    for ha, hb in zip(a, b, strict=True):
        for key in ("train_loss", "test_loss"):
            assert ha[key] == pytest.approx(hb[key], rel=1e-4)
    parts = sorted(p.name for p in latest(out).folder.glob("part*.pt"))
    assert parts == ["part0.pt", "part1.pt"]


@pytest.mark.slow
def test_data_parallel_replicas_train_and_checkpoint_once(tmp_path, capsys) -> None:
    """``--replicas 2``: 2 x 2 processes (nproc derived); replica 0 writes the checkpoint, one part per sub-network."""
    out = tmp_path / "run"
    assert _train(out, "--epochs", "1", "--subnets", "2", "--replicas", "2") == 0
    assert "parareal N=2 K=1 x2 replicas" in capsys.readouterr().out
    results = json.loads((out / "metrics.json").read_text())
    assert results["world_size"] == 4 and results["config"]["replicas"] == 2
    history = results["runs"]["paranet"]["history"]
    assert len(history) == 1 and 0.0 < history[0]["test_accuracy"] <= 1.0
    folder = latest(out).folder
    assert sorted(p.name for p in folder.glob("part*.pt")) == ["part0.pt", "part1.pt"]


SPLIT = [a for a in TINY if a not in ("--balance", "flops")]  # the split given instead of a balance


def test_split_points_pin_the_split_of_info_train_and_resume(tmp_path, capsys) -> None:
    """A measured balance can split differently from run to run; ``--split-points`` reproduces a run's split."""
    assert main(["paranet", "info", "--model", "resnet11-small", "--split-points", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["split_points"] == [2]
    out = tmp_path / "run"
    assert main(["paranet", "train", *SPLIT, "--split-points", "2", "--epochs", "1", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["split_points"] == [2]
    capsys.readouterr()
    # resuming with another split is refused by name; with none given, the run's own split is used
    assert main(["paranet", "train", *SPLIT, "--split-points", "1", "--epochs", "2", "--out", str(out), "--resume"]) == 2
    assert "split_points" in capsys.readouterr().err
    assert main(["paranet", "train", *SPLIT, "--epochs", "2", "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["split_points"] == [2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split-points", "3"], "--split-points 3: split points must be strictly increasing and inside 1..2"),
        (["--split-points", "1,2"], "--split-points 1,2: 2 sub-networks need 1 split points, got 2"),
        (["--split-points", "1", "--balance", "time"], "give --split-points or --balance, not both"),
    ],
)
def test_bad_split_points_are_one_line(tmp_path, capsys, args, message) -> None:
    assert main(["paranet", "train", *SPLIT, "--epochs", "1", "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("torchpint: error:") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()
    assert main(["paranet", "info", "--model", "resnet11-small", *args]) == 2
    assert message in capsys.readouterr().err
