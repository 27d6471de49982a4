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


def test_elastic_restart_of_the_same_run_resumes_by_itself(tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    open_run_folder(out, resume=False, overwrite=False).close()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    with open_run_folder(out, resume=False, overwrite=False) as folder:
        assert folder.resume
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-2")  # another job: the usual rules
    with pytest.raises(ConfigError, match="already holds a run"):
        open_run_folder(out, resume=False, overwrite=False)
