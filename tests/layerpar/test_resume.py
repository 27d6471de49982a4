"""``layer-parallel train`` run folders and checkpoints: every failure the issue lists, each a test.

Resume continues exactly; rank checkpoints from different epochs are named and the newest
complete checkpoint is used (no hang); a folder holding a run is not overwritten without
--overwrite; --resume with other settings, a folder in use, a damaged or crafted checkpoint
are refused or passed over in one line, and nothing runs code from a checkpoint file.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

from torchpint.cli.main import main
from torchpint.run import open_run_folder

# one xdist worker runs the whole module: its module-scoped fixture is built once
pytestmark = pytest.mark.xdist_group("layerpar/test_resume.py")

TINY = ["layer-parallel", "train", "--arch", "mlp", "--width", "6", "--layers", "8", "--levels", "2", "--cf", "2",
        "--batch", "256", "--no-progress", "--no-serial", "--json"]


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", weights_only=True)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    """Two epochs on 2 processes: checkpoints epoch_0001 and epoch_0002, each of 2 rank parts."""
    run = tmp_path_factory.mktemp("lp") / "run"
    assert main([*TINY, "--nproc", "2", "--epochs", "2", "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("lp") / "run"
    assert main([*TINY, "--epochs", "2", "--out", str(run)]) == 0
    return run


def copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def test_rank_parts_of_different_epochs_are_named_and_the_newest_complete_one_resumes_exactly(
        two_process_run, tmp_path, capfd) -> None:
    run = copy(two_process_run, tmp_path)
    ckpt = run / "checkpoints"
    shutil.copy(ckpt / "epoch_0001" / "part1.pt", ckpt / "epoch_0002" / "part1.pt")  # rank 1 one epoch behind
    assert main([*TINY, "--nproc", "2", "--epochs", "2", "--out", str(run), "--resume"]) == 0
    out = capfd.readouterr().out  # the workers' lines too
    assert "epoch_0002/part1.pt belongs to checkpoint 1, not 2 (parts of different epochs)" in out
    summary = last_json(out)
    assert summary["resumed_from_epoch"] == 1 and summary["world_size"] == 2
    # epoch 2 trained again from epoch 1's checkpoint: bitwise the uninterrupted run's weights and losses
    original, again = weights(two_process_run), weights(run)
    assert all(torch.equal(original[k], again[k]) for k in original)
    before = json.loads((two_process_run / "metrics.json").read_text())
    assert json.loads((run / "metrics.json").read_text())["batch_losses"] == before["batch_losses"]


def test_an_existing_run_is_not_overwritten_without_overwrite(one_process_run, tmp_path, capsys) -> None:
    run = copy(one_process_run, tmp_path)
    kept = (run / "model.pt").read_bytes()
    assert main([*TINY, "--epochs", "1", "--out", str(run)]) == 2
    assert "already holds a run: --resume continues it, --overwrite starts afresh" in capsys.readouterr().err
    assert (run / "model.pt").read_bytes() == kept
    assert main([*TINY, "--epochs", "1", "--out", str(run), "--overwrite"]) == 0
    assert last_json(capsys.readouterr().out)["history"][-1]["epoch"] == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_0001", "latest"]


def test_resume_with_other_settings_names_them(one_process_run, tmp_path, capsys) -> None:
    run = copy(one_process_run, tmp_path)
    assert main([*TINY, "--epochs", "3", "--out", str(run), "--resume", "--T", "3", "--lr", "0.1", "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "made with different settings: T (2.0 there, 3.0 now), lr (0.05 there, 0.1 now), seed (0 there, 1 now)" in err
    assert "Traceback" not in err
    assert main([*TINY, "--epochs", "3", "--out", str(tmp_path / "missing"), "--resume"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_folder_in_use_is_refused(one_process_run, tmp_path, capsys) -> None:
    run = copy(one_process_run, tmp_path)
    with open_run_folder(run, resume=True, overwrite=False):  # another run holds the folder
        assert main([*TINY, "--epochs", "3", "--out", str(run), "--resume"]) == 2
    assert "is in use by another run" in capsys.readouterr().err


class _RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(__file__).parent / "never",))


@pytest.mark.parametrize("damage", ["truncated", "empty", "random", "code", "pointer"])
def test_a_damaged_checkpoint_is_named_and_the_one_before_used(one_process_run, tmp_path, capsys, damage) -> None:
    run = copy(one_process_run, tmp_path)
    newest = run / "checkpoints" / "epoch_0002" / "part0.pt"
    marker = tmp_path / "ran"
    if damage == "truncated":
        newest.write_bytes(newest.read_bytes()[:100])
    elif damage == "empty":
        newest.write_bytes(b"")
    elif damage == "random":
        newest.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    elif damage == "code":  # unpickling this would create the marker file
        _RunsCode.__reduce__ = lambda self: (Path.touch, (marker,))
        torch.save({"format": 1, "index": 2, "part": 0, "parts": 1, "state": _RunsCode()}, newest)
    else:
        (run / "checkpoints" / "latest").write_bytes(b"\x00garbled")
    code = main([*TINY, "--epochs", "2", "--out", str(run), "--resume"])
    out = capsys.readouterr().out
    assert code == 0 and not marker.exists()
    if damage == "pointer":  # the intact newest checkpoint is used (nothing to redo)
        assert "latest is garbled" in out and last_json(out)["resumed_from_epoch"] == 2
    else:
        assert "epoch_0002/part0.pt is" in out and last_json(out)["resumed_from_epoch"] == 1
        original, again = weights(one_process_run), weights(run)
        assert all(torch.equal(original[k], again[k]) for k in original)
