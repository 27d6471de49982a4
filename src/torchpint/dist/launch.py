"""Start and supervise worker processes for torch.distributed runs on one machine.

``run_workers(fn, nproc, ...)`` is what ``torchpint ... --nproc N`` and the tests use: it
spawns ``nproc`` processes, gives each the torchrun environment (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``), one intra-op thread, and a gloo (CPU) or nccl (CUDA)
process group, runs ``fn(*args)`` in each, and returns their results in rank order.

Supervision is the point: if any worker raises, its message comes back as a
:class:`WorkerError`; if any worker dies (killed, segfault, ``os._exit``), the others are
terminated within a fraction of a second and the error names the rank and its exit code.
A run never hangs on a dead peer.
"""

from __future__ import annotations

import os
import queue as queue_module
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


class WorkerError(RuntimeError):
    """A worker process failed; the message says which rank and why."""


#: exit code of a worker that found itself re-running the caller's script while it started
_UNGUARDED_MAIN_EXIT = 87

MAIN_GUARD_HELP = (
    "the script that starts worker processes must do so under `if __name__ == \"__main__\":` "
    "(workers are started with 'spawn', which imports the script again in every worker: without the guard "
    "each worker would start workers of its own); put the call that passes nproc > 1 in a main() and call "
    "it from that block"
)


def _refuse_inside_bootstrapping_worker() -> None:
    """In a worker that is importing the caller's script, leave quietly with a code the parent explains.

    Without this, multiprocessing raises its RuntimeError in every worker (a long traceback each)
    and the parent only sees workers that died.
    """
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        os._exit(_UNGUARDED_MAIN_EXIT)


class _StopOnSigterm:
    """SIGTERM becomes ``SystemExit`` in the launcher while workers run, so that the ``finally`` below
    stops them and the queue's semaphores are released (killed outright, the launcher left running
    workers and "leaked semaphore" warnings behind).  Only in the main thread, where handlers can be set."""

    def __enter__(self) -> None:
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._raise)

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def init_from_env(backend: str | None = None, timeout_s: float = 120.0) -> None:
    """Join the process group described by the torchrun environment variables."""
    if dist.is_initialized():
        return
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("TORCHPINT_BACKEND") != "gloo" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def _worker(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    rank: int,
    nproc: int,
    port: int,
    threads: int,
    backend: str,
    results: Any,
) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(threads)
    try:
        init_from_env(backend)
        value = fn(*args)
        results.put((rank, "ok", value))
    except BaseException as error:  # noqa: BLE001 - everything goes back to the parent
        detail = traceback.format_exc() if os.environ.get("TORCHPINT_DEBUG") else ""
        results.put((rank, "error", f"{type(error).__name__}: {error}\n{detail}".rstrip()))
        results.close()
        results.join_thread()
        os._exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_workers(
    fn: Callable[..., Any],
    nproc: int,
    args: tuple[Any, ...] = (),
    *,
    threads: int = 1,
    backend: str = "gloo",
    timeout_s: float | None = None,
) -> list[Any]:
    """Run ``fn(*args)`` on ``nproc`` supervised processes; their results in rank order.

    ``fn`` and ``args`` must be picklable (module-level function).  Raises
    :class:`WorkerError` when a worker raises or dies, after stopping all the others.

    Workers are started with 'spawn': each imports the calling script again, so a script
    that calls this (or any torchpint function given ``nproc > 1``) must make the call under
    ``if __name__ == "__main__":``; without it the call fails with a :class:`WorkerError` that
    says so.  SIGTERM to the calling process stops the workers before it exits.
    """
    _refuse_inside_bootstrapping_worker()
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    with _StopOnSigterm():
        return _run_supervised(fn, nproc, args, threads=threads, backend=backend, timeout_s=timeout_s)


def _run_supervised(
    fn: Callable[..., Any], nproc: int, args: tuple[Any, ...], *, threads: int, backend: str, timeout_s: float | None
) -> list[Any]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_worker, args=(fn, args, rank, nproc, port, threads, backend, results), daemon=True)
        for rank in range(nproc)
    ]
    for proc in procs:
        proc.start()
    values: dict[int, Any] = {}
    errors: dict[int, str] = {}
    start = time.monotonic()
    try:
        while len(values) < nproc:
            try:
                rank, status, value = results.get(timeout=0.05)
            except queue_module.Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise WorkerError(_diagnose(procs, results, errors)) from None
                if timeout_s is not None and time.monotonic() - start > timeout_s:
                    raise WorkerError(f"workers did not finish within {timeout_s:.0f} s; stopped them") from None
                continue
            if status == "error":
                errors[rank] = value
                raise WorkerError(_diagnose(procs, results, errors))
            values[rank] = value
        for proc in procs:
            proc.join(timeout=30)
        return [values[r] for r in range(nproc)]
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()


def _diagnose(procs: list[Any], results: Any, errors: dict[int, str]) -> str:
    """Name the root cause: a worker that died beats the peers whose links broke because of it."""
    time.sleep(0.3)  # let the other workers report or exit
    while True:
        try:
            rank, status, value = results.get_nowait()
        except queue_module.Empty:
            break
        if status == "error":
            errors.setdefault(rank, value)
    nproc = len(procs)
    if any(proc.exitcode == _UNGUARDED_MAIN_EXIT for proc in procs):
        return f"the workers could not start: {MAIN_GUARD_HELP}"
    for rank, proc in enumerate(procs):
        if proc.exitcode not in (None, 0) and rank not in errors:
            return f"worker {rank} of {nproc} died (exit code {proc.exitcode}); stopped the others"
    rank = min(errors)
    first_line = errors[rank].strip().splitlines()[0] if errors[rank].strip() else "unknown error"
    return f"worker {rank} of {nproc} failed: {first_line[:500]}"
