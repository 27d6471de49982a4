"""A run folder: refused when it would lose a run, locked while a run uses it.

Rules (every training command, via :func:`open_run_folder` on rank 0):

* a folder that holds a run (``run.json`` or ``checkpoints/``) is never overwritten without
  ``overwrite``; with it, the run's files are removed (after the lock is taken, so a live run
  is never wiped);
* ``resume`` on a missing folder, or one that holds no run, is refused;
* while a run uses the folder, rank 0 holds ``fcntl.flock`` on ``<folder>/.lock`` for the run's
  life: a second run on the same folder is refused at once.  The kernel drops the lock when
  the process dies however it dies, so a dead run never leaves the folder stuck;
* an elastic restart of the torchrun job that started the run resumes by itself: rank 0 marks
  the folder as started in torchrun's job store, which outlives the failed attempt (every node
  sees it, unlike ``TORCHELASTIC_RESTART_COUNT``, which only the failed node's agent raises).

The folder then holds ``run.json`` (command, configuration, package version, torchrun run id),
``checkpoints/`` (see :mod:`torchpint.run.checkpoint`), the metrics, plots and final model.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from torchpint.errors import ConfigError

__all__ = ["RunFolder", "elastic_restart", "holds_run", "open_run_folder", "will_resume"]

LOCK_NAME = ".lock"
RUN_FILE = "run.json"
CHECKPOINTS = "checkpoints"


def _started_key(path: str | Path) -> str:
    return f"torchpint/run-started/{os.path.abspath(path)}"


def elastic_restart(path: str | Path) -> bool:
    """True when an earlier attempt of this torchrun job started a run in ``path``: a restart after a failure.

    Rank 0 decides from torchrun's job store, where every attempt's rank 0 marks the folders it
    opened (the store outlives a failed attempt); every other rank of the attempt gets rank 0's
    answer through the attempt's own store, so the ranks of one attempt never disagree (a rank
    that resumed while rank 0 started afresh would wait forever in the checkpoint agreement).
    Collective under torchrun: when one rank asks, rank 0 must ask too.  ``False`` outside torchrun.
    """
    from torchpint.run.launch import attempt_store, job_store, rank

    job, attempt = job_store(), attempt_store()
    if job is None or attempt is None:
        return False
    key = f"torchpint/restart/{os.path.abspath(path)}"
    if rank() != 0:
        return bool(attempt.get(key) == b"1")  # waits for rank 0's answer
    if attempt.check([key]):
        return bool(attempt.get(key) == b"1")
    restart = bool(job.check([_started_key(path)]))
    attempt.set(key, "1" if restart else "0")
    return restart


def _mark_started(path: Path) -> None:
    from torchpint.run.launch import job_store

    store = job_store()
    if store is not None:
        store.set(_started_key(path), "1")


def _run_id() -> str | None:
    return os.environ.get("TORCHELASTIC_RUN_ID")


def will_resume(path: str | Path, *, resume: bool, overwrite: bool) -> bool:
    """Whether a run on ``path`` continues from its checkpoints: ``resume``, or a torchrun restart of it.

    Under torchrun every rank asks (see :func:`elastic_restart`); :func:`open_run_folder`
    (rank 0) decides the same and enforces the rules.
    """
    root = Path(path)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: choose one")
    # torchrun restarted the job that started this run: continue it, whatever the flags said
    # (overwriting was the first attempt's business).  Asked first and always: it is collective.
    restart = elastic_restart(root)
    return resume or (restart and holds_run(root))


def holds_run(path: Path) -> bool:
    """Whether ``path`` holds (the start of) a run: its record or its checkpoints."""
    return (path / RUN_FILE).is_file() or (path / CHECKPOINTS).is_dir()


@dataclass
class RunFolder:
    """An opened run folder; ``resume`` says whether the run continues from its checkpoints.

    Keep it open for the run's life (``with open_run_folder(...) as folder:``, or :meth:`close`):
    it holds the lock.
    """

    path: Path
    resume: bool
    _lock: IO[str] | None = field(default=None, repr=False)

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _take_lock(path: Path) -> IO[str]:
    handle = open(path / LOCK_NAME, "a+")  # noqa: SIM115 - held for the run's life, closed by RunFolder.close
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"{path} is in use by another run ({holder}); wait for it to finish or choose another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    handle.flush()
    return handle


def open_run_folder(path: str | Path, *, resume: bool, overwrite: bool, record: dict[str, Any] | None = None,
                    lock: bool = True) -> RunFolder:
    """Check the rules above, take the lock, and (for a new run) write ``run.json``; rank 0 only.

    ``record``: what ``run.json`` holds (command, configuration; the package version and the
    torchrun run id are added).  ``lock=False`` only for callers that are not rank 0 and merely
    need the paths.  Raises :class:`~torchpint.errors.ConfigError` with one line.
    """
    from torchpint.run.report import write_json

    root = Path(path)
    resume = will_resume(root, resume=resume, overwrite=overwrite)
    if resume and not holds_run(root):
        raise ConfigError(f"--resume: {root} holds no run to continue" if root.exists()
                          else f"--resume: {root} does not exist")
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--out {root} is a file, not a folder")
    root.mkdir(parents=True, exist_ok=True)
    handle = _take_lock(root) if lock else None
    try:
        if not resume and holds_run(root):
            if not overwrite:
                raise ConfigError(f"{root} already holds a run: --resume continues it, --overwrite starts afresh, "
                                  f"or choose another --out")
            for entry in root.iterdir():
                if entry.name != LOCK_NAME:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        if not resume and lock:
            write_json(root / RUN_FILE, {**(record or {}), "torchrun_run_id": _run_id()})
        if lock:
            _mark_started(root)
    except BaseException:
        if handle is not None:
            handle.close()
        raise
    return RunFolder(root, resume, handle)
