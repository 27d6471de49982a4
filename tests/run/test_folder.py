"""Run folders: no overwrite without --overwrite, --resume needs a run, one run at a time, no stuck lock."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from torchpint.errors import ConfigError
from torchpint.run.folder import open_run_folder


def test_overwrite_and_resume_rules(tmp_path) -> None:
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="does not exist"):
        open_run_folder(out, resume=True, overwrite=False)
    with open_run_folder(out, resume=False, overwrite=False, record={"command": "x"}) as folder:
        assert not folder.resume
        (folder.checkpoints / "epoch_0001").mkdir(parents=True)
    assert json.loads((out / "run.json").read_text())["command"] == "x"
    with pytest.raises(ConfigError, match="already holds a run: --resume continues it, --overwrite"):
        open_run_folder(out, resume=False, overwrite=False)
    assert (out / "checkpoints" / "epoch_0001").is_dir()  # nothing was touched
    with open_run_folder(out, resume=True, overwrite=False) as folder:
        assert folder.resume
    with open_run_folder(out, resume=False, overwrite=True):
        assert not (out / "checkpoints").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no run to continue"):
        open_run_folder(tmp_path / "empty", resume=True, overwrite=False)


def test_a_folder_in_use_is_refused_and_a_dead_run_leaves_no_stuck_lock(tmp_path) -> None:
    out = tmp_path / "run"
    first = open_run_folder(out, resume=False, overwrite=False)
    with pytest.raises(ConfigError, match="in use by another run \\(pid"):
        open_run_folder(out, resume=True, overwrite=False)
    first.close()
    # a process that takes the folder and dies by SIGKILL: the kernel drops its lock
    code = (f"import os, signal; from torchpint.run.folder import open_run_folder; "
            f"f = open_run_folder({str(out)!r}, resume=True, overwrite=False); os.kill(os.getpid(), signal.SIGKILL)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == -9
    with open_run_folder(out, resume=True, overwrite=False):
        pass


def _fake_torchrun_job(monkeypatch) -> object:
    """This process as rank 0 of a torchrun job with its own job store (a new store: a new job)."""
    import importlib

    import torch.distributed as dist

    from torchpint.run.launch import free_port

    launch_module = importlib.import_module("torchpint.run.launch")  # the module (torchpint.run.launch is also a function)

    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(launch_module, "_STORE", None)
    return store


def test_elastic_restart_of_the_same_job_resumes_by_itself(tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    job = _fake_torchrun_job(monkeypatch)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    open_run_folder(out, resume=False, overwrite=False).close()  # the first attempt started the run
    # within the first attempt the run is not "restarted" (every rank of an attempt must agree)
    with pytest.raises(ConfigError, match="already holds a run"):
        open_run_folder(out, resume=False, overwrite=False)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    with open_run_folder(out, resume=False, overwrite=False) as folder:  # torchrun restarted the job
        assert folder.resume
    with open_run_folder(out, resume=False, overwrite=True) as folder:  # the restart repeats the flags
        assert folder.resume and (out / "run.json").is_file()
    other = _fake_torchrun_job(monkeypatch)  # another job: the usual rules
    with pytest.raises(ConfigError, match="already holds a run"):
        open_run_folder(out, resume=False, overwrite=False)
    del job, other
