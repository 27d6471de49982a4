"""``paranet train`` against hostile run folders: damaged checkpoints, pointers, locks, overwrites, signals."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest

from torchpint.cli.main import main
from torchpint.run.folder import open_run_folder
from torchpint.testing.processes import alive, descendants

# one xdist worker runs the whole module: its module-scoped fixture is built once
pytestmark = pytest.mark.xdist_group("paranet/test_run_folder.py")

TINY = ["--model", "resnet11-small", "--dataset", "digits", "--image-size", "8", "--max-train", "96",
        "--max-test", "64", "--batch-size", "32", "--balance", "flops", "--no-progress"]  # fmt: skip


def _train(out, *extra) -> int:
    return main(["paranet", "train", *TINY, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """A finished 2-epoch run (checkpoints of epochs 1 and 2 kept); each test works on a copy."""
    out = tmp_path_factory.mktemp("runs") / "base"
    assert _train(out, "--epochs", "2") == 0
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _truncate(f):
    f.write_bytes(f.read_bytes()[:100])


def _zero(f):
    f.write_bytes(b"")


def _random(f):
    f.write_bytes(os.urandom(2048))


def _crafted(f):
    with open(f, "wb") as handle:
        pickle.dump({"index": 2, "x": _RunsCode()}, handle)


@pytest.mark.parametrize(("damage", "named"), [(_truncate, "part0.pt is unreadable"), (_zero, "part0.pt is empty (0 bytes)"),
                                               (_random, "part0.pt is unreadable"), (_crafted, "refused unread")])
def test_a_damaged_checkpoint_is_named_and_the_previous_one_used(two_epochs, tmp_path, capsys, monkeypatch, damage, named):
    monkeypatch.chdir(tmp_path)
    out = _copy(two_epochs, tmp_path / "run")
    damage(out / "paranet" / "checkpoints" / "epoch_0002" / "part0.pt")
    assert _train(out, "--epochs", "3", "--resume") == 0
    text = capsys.readouterr().out
    assert named in text and "passed over" in text and "resumed from" in text and "epoch_0001 (epoch 1 of 3)" in text, text
    assert [h["epoch"] for h in json.loads((out / "metrics.json").read_text())["runs"]["paranet"]["history"]] == [1, 2, 3]
    assert not (tmp_path / "pwned").exists()


def test_no_complete_checkpoint_refuses_and_changes_nothing(two_epochs, tmp_path, capsys) -> None:
    out = _copy(two_epochs, tmp_path / "run")
    for epoch in (1, 2):
        _zero(out / "paranet" / "checkpoints" / f"epoch_000{epoch}" / "part0.pt")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert _train(out, "--epochs", "3", "--resume") == 2
    err = capsys.readouterr().err
    assert "no complete checkpoint" in err and "nothing was changed" in err and err.count("\n") == 1, err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_a_garbled_pointer_resumes_from_the_intact_newest_checkpoint(two_epochs, tmp_path, capsys) -> None:
    out = _copy(two_epochs, tmp_path / "run")
    (out / "paranet" / "checkpoints" / "latest").write_bytes(b"\xffepoch_00??")
    assert _train(out, "--epochs", "3", "--resume") == 0
    text = capsys.readouterr().out
    assert "latest is garbled" in text and "epoch_0002 (epoch 2 of 3)" in text, text


def test_resume_with_other_settings_is_refused_by_name(two_epochs, tmp_path, capsys) -> None:
    out = _copy(two_epochs, tmp_path / "run")
    assert _train(out, "--epochs", "3", "--resume", "--lr", "0.2", "--seed", "1") == 2
    err = capsys.readouterr().err
    assert "different settings: lr (0.1 there, 0.2 now), seed (0 there, 1 now)" in err, err


def test_resume_of_a_missing_folder_and_a_folder_in_use_are_refused(two_epochs, tmp_path, capsys) -> None:
    assert _train(tmp_path / "missing", "--epochs", "1", "--resume") == 2
    assert "--resume: " in capsys.readouterr().err and not (tmp_path / "missing").exists()
    out = _copy(two_epochs, tmp_path / "run")
    with open_run_folder(out, resume=True, overwrite=False):  # another run holds the folder
        assert _train(out, "--epochs", "3", "--resume") == 2
        assert "is in use by another run (pid" in capsys.readouterr().err
        assert _train(out, "--epochs", "1", "--overwrite") == 2
        assert "in use by another run" in capsys.readouterr().err
    assert (out / "paranet" / "checkpoints" / "epoch_0002").is_dir()


def test_sigterm_to_the_launcher_stops_every_worker_within_2_s(tmp_path) -> None:
    out = tmp_path / "run"
    # on the seeded synthetic images: the launcher and both workers are fresh interpreters, which would
    # spend ~2 s of CPU each importing scikit-learn for the digits; the stop does not depend on the data
    synthetic = [("synthetic" if arg == "digits" else arg) for arg in TINY]
    proc = subprocess.Popen([sys.executable, "-m", "torchpint", "paranet", "train", *synthetic, "--epochs", "50", "--nproc", "2",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in proc.stdout:  # training has begun on both processes
        if "epoch 1/50:" in line:
            break
    workers = descendants(proc.pid)
    assert len(workers) >= 2, workers
    proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    while any(alive(p) for p in workers) and time.monotonic() - start < 5:
        time.sleep(0.05)
    assert not any(alive(p) for p in workers), "orphaned workers"
    # 2 s on a machine with a core per process; as tests/run/test_launch.py, stretched when it is oversubscribed
    assert time.monotonic() - start < 2.0 * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    assert proc.wait(timeout=10) == 128 + signal.SIGTERM
    err = proc.stderr.read()
    assert "stopped by SIGTERM" in err and "Traceback" not in err, err
    checkpoints = sorted(p.name for p in (out / "paranet" / "checkpoints").glob("epoch_*"))
    time.sleep(1.0)  # nothing writes after the stop
    assert sorted(p.name for p in (out / "paranet" / "checkpoints").glob("epoch_*")) == checkpoints
