"""Run folders: no overwrite without --overwrite, --resume needs a run, one run at a time, no stuck lock."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time

import pytest

from torchpint.errors import ConfigError
from torchpint.run.folder import open_run_folder

LAUNCH = importlib.import_module("torchpint.run.launch")  # the module (torchpint.run.launch is also a function)


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


def _fake_torchrun_job(monkeypatch, rank: int = 0) -> object:
    """This process as a rank of a torchrun job with its own job store (a new store: a new job)."""
    import torch.distributed as dist

    from torchpint.run.launch import free_port

    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    for key, value in {"RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "TORCHELASTIC_USE_AGENT_STORE": "True"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(LAUNCH, "_STORE", None)
    _new_attempt(monkeypatch)
    return store


def _new_attempt(monkeypatch) -> None:
    """What an elastic restart does to this process: it is a new process of a new attempt."""
    monkeypatch.setattr(LAUNCH, "_ATTEMPT", None)


def test_elastic_restart_of_the_same_job_resumes_by_itself(tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    job = _fake_torchrun_job(monkeypatch)
    open_run_folder(out, resume=False, overwrite=False).close()  # the first attempt started the run
    # within the first attempt the run is not "restarted" (every rank of an attempt must agree)
    with pytest.raises(ConfigError, match="already holds a run"):
        open_run_folder(out, resume=False, overwrite=False)
    _new_attempt(monkeypatch)  # torchrun restarted the job
    with open_run_folder(out, resume=False, overwrite=False) as folder:
        assert folder.resume
    _new_attempt(monkeypatch)
    with open_run_folder(out, resume=False, overwrite=True) as folder:  # the restart repeats the flags
        assert folder.resume and (out / "run.json").is_file()
    other = _fake_torchrun_job(monkeypatch)  # another job: the usual rules
    with pytest.raises(ConfigError, match="already holds a run"):
        open_run_folder(out, resume=False, overwrite=False)
    del job, other


def test_a_rank_passes_over_the_failed_attempts_store_and_gets_rank_0s_answer(monkeypatch) -> None:
    """Rank 1 of a restarted attempt finds the failed attempt's address (a dead port) in the job
    store; it waits for this attempt's rank 0 to publish, then takes rank 0's restart decision."""
    import threading

    import torch.distributed as dist

    from torchpint.run.folder import elastic_restart
    from torchpint.run.launch import free_port

    job = _fake_torchrun_job(monkeypatch, rank=1)
    job.set("torchpint/attempt/address", f"{free_port()} deadbeef")  # the failed attempt's rank 0: gone
    job.set("torchpint/run-started//somewhere", "1")

    def rank_0() -> None:
        time.sleep(1.0)
        server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        server.set("torchpint/attempt/token", "cafe")
        job.set("torchpint/attempt/address", f"{server.port} cafe")
        server.set("torchpint/restart//somewhere", "1")
        done.wait(30)

    done = threading.Event()
    thread = threading.Thread(target=rank_0)
    thread.start()
    try:
        assert elastic_restart("/somewhere")
        assert LAUNCH.attempt_token() == "cafe"
    finally:
        done.set()
        thread.join()
