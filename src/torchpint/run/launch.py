"""The one way torchpint starts processes: one process, N supervised local ones, or torchrun's.

Every command (and every test or benchmark that needs several processes) goes through
:func:`launch`; library code never spawns.  ``launch(fn, args, nproc=P)`` picks the mode:

* **torchrun** (``torchrun`` / ``python -m torch.distributed.run``, any ``--nnodes`` and
  ``--nproc-per-node``, c10d rendezvous): this process is one rank of a world that torchrun
  sized.  ``nproc`` must be ``None`` or equal that world size; otherwise a
  :class:`~torchpint.errors.ConfigError` (every rank raises the same one, so every rank prints
  the same line and exits 2: never silent copies).  The process group is created here,
  ``fn(*args)`` runs on this rank, and rank 0 gets its result (the others get ``None``).
* **one process** (``nproc`` is ``None`` or 1, no torchrun): ``fn(*args)`` runs here, with no
  process group.
* **N local processes** (``nproc > 1``): :func:`run_workers` spawns and supervises them and
  returns rank 0's result.

Use :func:`world_size` first to learn (and check) the world size before anything is built, so a
size the command cannot use is refused before any process starts.

Supervision (local mode): a worker that raises comes back as :class:`WorkerError` with its
message; a worker that dies (killed, segfault, ``os._exit``) stops all others within about a
second and the error names its rank and exit code.  SIGTERM or SIGINT to the launching process
stops every worker within 2 s (the launcher then raises :class:`Interrupted`), and a worker whose
launcher dies (even by SIGKILL) is killed by the kernel (``PR_SET_PDEATHSIG`` on Linux) or
notices within a second (parent-pid polling elsewhere): no orphans.

Peer failures under torchrun: every rank keeps a heartbeat in the rendezvous store
(:class:`_Heartbeat`); when a collective fails because a peer went away (gloo reports a closed
connection at once), :func:`launch` waits briefly for the heartbeats to settle and raises
:class:`WorkerError` naming the rank(s) and host(s) that stopped beating, so the surviving ranks
exit within a few seconds with one line that says who failed.
"""

from __future__ import annotations

import ctypes
import os
import queue as queue_module
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torchpint.errors import ConfigError, NonFiniteError, TorchPintError

__all__ = [
    "Interrupted",
    "WorkerError",
    "free_port",
    "init_from_env",
    "attempt_store",
    "die_with_agent",
    "job_store",
    "launch",
    "launched_by_torchrun",
    "rank",
    "run_workers",
    "world_size",
]

#: seconds a collective may wait for a silent (hung, not dead) peer before the run fails;
#: a dead peer is noticed at once (its connections close).  ``TORCHPINT_PG_TIMEOUT`` overrides.
DEFAULT_PG_TIMEOUT_S = 300.0
_HEARTBEAT_S = 0.2  # how often each rank touches its heartbeat key
_STALE_S = 1.0  # a heartbeat older than this belongs to a rank that is gone
_MAIN_GUARD_HINT = (
    "worker processes re-import the main module (multiprocessing's 'forkserver' start method): a script that calls torchpint's "
    "launcher (torchpint.run.launch, run_workers) must run it under "
    "`if __name__ == \"__main__\":`"
)


class WorkerError(TorchPintError, RuntimeError):
    """A worker process failed or died; the message says which rank (and host) and why."""


class WorkerConfigError(WorkerError, ConfigError):
    """A worker refused its input (a :class:`~torchpint.errors.ConfigError` there): CLIs exit 2."""


class WorkerNonFiniteError(WorkerError, NonFiniteError):
    """A worker's computation became NaN/Inf (a :class:`~torchpint.errors.NonFiniteError` there): CLIs exit 1."""


class _StorePortTaken(RuntimeError):
    """A local launch's store port was taken by another process between being picked and being bound."""


def _error_kind(error: BaseException) -> str:
    if isinstance(error, _StorePortTaken):
        return "port"
    return "config" if isinstance(error, ConfigError) else "nonfinite" if isinstance(error, NonFiniteError) else ""


_ERROR_CLASSES: dict[str, type[WorkerError]] = {"config": WorkerConfigError, "nonfinite": WorkerNonFiniteError}


def _is_broken_link(message: str) -> bool:
    """A peer's connection broke: the consequence of another rank's failure, not its cause."""
    return any(s in message for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                                      "connection closed", "Socket closed"))


class Interrupted(TorchPintError):
    """SIGTERM or SIGINT reached the launcher; every worker it started has been stopped."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}; every worker was stopped")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launched_by_torchrun() -> bool:
    """True in a process that torchrun (or anything that sets its environment) started."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def rank() -> int:
    """This process's global rank: from the process group, else from torchrun's environment, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


_STORE: Any = None


def job_store() -> Any:
    """A client of torchrun's job store (the rendezvous TCPStore), or ``None`` outside torchrun.

    The store lives as long as the torchrun job, across elastic restarts, so it is where a
    restarted process learns what the failed attempt had begun (:func:`torchpint.run.folder.will_resume`).
    Keys of one attempt go to :func:`attempt_store`.
    """
    global _STORE
    if _STORE is None and launched_by_torchrun() and "MASTER_ADDR" in os.environ:
        try:
            _STORE = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                   timeout=timedelta(seconds=10))
        except Exception:  # noqa: BLE001 - no store: callers fall back to their single-attempt behaviour
            return None
    return _STORE


_ATTEMPT: tuple[Any, str] | None = None  # (store, token) of this torchrun attempt
_ATTEMPT_KEY = "torchpint/attempt/address"
_TOKEN_KEY = "torchpint/attempt/token"


def attempt_store() -> Any:
    """A store of this torchrun attempt alone (``None`` outside torchrun or without its shared job store).

    Why: under torchrun's shared job store (its default with c10d rendezvous) the job store
    outlives elastic restarts, and keys left by a failed attempt mislead the next one: a
    restarted worker reads its dead peers' addresses (pytorch/pytorch#135712), and the attempt
    number cannot be agreed on from the environment (``TORCHELASTIC_RESTART_COUNT`` rises only on
    the failed node's agent) nor by counting arrivals (a worker that fails before it arrives
    shifts every later count).  So every attempt gets a store of its own: rank 0 starts one on a
    free port and publishes the port and a fresh token in the job store; every other rank takes
    the published address once the store that answers there holds that token.  An address left
    by a failed attempt points at a dead process (torchrun stops every worker before it starts
    the next attempt): refused, and read again until rank 0 of this attempt has published.
    """
    global _ATTEMPT
    if _ATTEMPT is not None:
        return _ATTEMPT[0]
    job = job_store() if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" else None
    if job is None:
        return None
    host, timeout = os.environ["MASTER_ADDR"], timedelta(seconds=_pg_timeout())
    if rank() == 0:  # global rank 0 runs on the node whose agent hosts the job store: MASTER_ADDR reaches it
        store = dist.TCPStore(host, 0, is_master=True, timeout=timeout, wait_for_workers=False)
        token = os.urandom(8).hex()
        store.set(_TOKEN_KEY, token)
        job.set(_ATTEMPT_KEY, f"{store.port} {token}")
        _ATTEMPT = (store, token)
        return store
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        store = token = None
        if job.check([_ATTEMPT_KEY]):
            port, token = job.get(_ATTEMPT_KEY).decode().split()
            try:
                socket.create_connection((host, int(port)), timeout=2).close()  # a dead port refuses at once
                store = dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=5))
                if not (store.check([_TOKEN_KEY]) and store.get(_TOKEN_KEY).decode() == token):
                    store = None  # something else answers on a stale port
            except Exception:  # noqa: BLE001 - the failed attempt's rank 0 is gone: its port refuses
                store = None
        if store is not None and token is not None:
            store.set_timeout(timeout)
            _ATTEMPT = (store, token)
            return store
        if time.monotonic() > deadline:
            raise WorkerError(f"rank {rank()}: rank 0 of this torchrun attempt did not publish its store within "
                              f"{timeout.total_seconds():.0f} s (TORCHPINT_PG_TIMEOUT)")
        time.sleep(0.1)


def attempt_token() -> str:
    """This torchrun attempt's token ("" outside one): keys of one attempt in the job store carry it."""
    return _ATTEMPT[1] if _ATTEMPT is not None else ""


def world_size(nproc: int | None, *, allowed: Callable[[int], str | None] | None = None) -> int:
    """The number of processes a command will run on, checked before anything starts.

    ``nproc``: the command's ``--nproc`` (``None``: not given).  Under torchrun the world size
    is torchrun's and a ``nproc`` that disagrees is refused; otherwise it is ``nproc`` (default 1).
    ``allowed(size)`` returns ``None`` for a size the command can use, else the reason it cannot
    (one phrase, e.g. ``"needs N=4 processes (one sub-network each) or 1"``).  Raises
    :class:`~torchpint.errors.ConfigError` with one line; under torchrun every rank raises the
    same, so all of them exit 2.
    """
    if launched_by_torchrun():
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if nproc is not None and nproc != size:
            raise ConfigError(f"--nproc {nproc} disagrees with torchrun's world size {size} "
                              f"(under torchrun the world size comes from --nnodes x --nproc-per-node; drop --nproc)")
        source = "torchrun's world size"
    else:
        size = 1 if nproc is None else nproc
        source = "--nproc"
        if size < 1:
            raise ConfigError(f"--nproc must be >= 1, got {size}")
    reason = allowed(size) if allowed is not None else None
    if reason:
        raise ConfigError(f"{source} {size} cannot be used: {reason}")
    return size


def _pg_timeout() -> float:
    text = os.environ.get("TORCHPINT_PG_TIMEOUT")
    try:
        return float(text) if text else DEFAULT_PG_TIMEOUT_S
    except ValueError:
        raise ConfigError(f"TORCHPINT_PG_TIMEOUT must be a number of seconds, got {text!r}") from None


def init_from_env(backend: str | None = None, timeout_s: float | None = None) -> None:
    """Join the process group that the torchrun environment variables describe (no-op if joined).

    Under torchrun's shared job store (its default with c10d rendezvous) the group is formed in
    :func:`attempt_store`, a store of this attempt alone, so an elastic restart never meets the
    failed attempt's keys.
    """
    if dist.is_initialized():
        return
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("TORCHPINT_BACKEND") != "gloo" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    timeout = timedelta(seconds=timeout_s or _pg_timeout())
    # (taken out of the environment: a process this one starts, a torchrun job say, must not see it)
    token = os.environ.pop(_LAUNCH_TOKEN_ENV, None)
    if token and "TORCHELASTIC_RUN_ID" not in os.environ:
        # a worker of run_workers: the group's store is this launch's own (see _launch_store)
        rank_, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group(backend=backend, store=_launch_store(token, rank_, size, timeout),
                                rank=rank_, world_size=size, timeout=timeout)
        return
    store = attempt_store()
    if store is None:
        dist.init_process_group(backend=backend, timeout=timeout)
        return
    dist.init_process_group(backend=backend, store=dist.PrefixStore("torchpint/pg", store),
                            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout)


_LAUNCH_TOKEN_ENV = "TORCHPINT_LAUNCH_TOKEN"
_LAUNCH_TOKEN_KEY = "torchpint/launch"


def _launch_store(token: str, rank_: int, size: int, timeout: timedelta) -> Any:
    """The store of one local launch, on the port the launcher picked (``MASTER_PORT``), keys under its token.

    The launcher picks a free port and its workers bind it moments later: in between, another
    process may take it (a parallel launch, or any outgoing connection given that ephemeral
    port).  Rank 0 then fails to listen, and the other ranks may reach someone else's store:
    they check it holds this launch's token.  Either way the worker raises
    :class:`_StorePortTaken` and the launcher starts the workers again on another port.
    """
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    try:
        if rank_ == 0:
            store = dist.TCPStore(host, port, size, is_master=True, timeout=timeout, wait_for_workers=False)
            store.set(_LAUNCH_TOKEN_KEY, token)
        else:
            store = dist.TCPStore(host, port, size, is_master=False, timeout=timeout)
            if store.get(_LAUNCH_TOKEN_KEY).decode() != token:  # waits for rank 0 to set it
                raise _StorePortTaken(f"port {port} answers with another launch's store")
    except _StorePortTaken:
        raise
    except RuntimeError as error:
        if "EADDRINUSE" in str(error) or "address already in use" in str(error).lower():
            raise _StorePortTaken(f"port {port} was taken before rank 0 could listen on it") from None
        raise
    return dist.PrefixStore(f"torchpint/{token}", store)


# ---------------------------------------------------------------------------- launch
def launch(
    fn: Callable[..., Any],
    args: tuple[Any, ...] = (),
    *,
    nproc: int | None = None,
    threads: int = 1,
    backend: str = "gloo",
    timeout_s: float | None = None,
) -> Any:
    """Run ``fn(*args)`` on every process of the run and return rank 0's result (``None`` elsewhere).

    ``nproc``: ``None`` or the process count (checked against torchrun's world size when under
    torchrun; call :func:`world_size` first for the one-line refusal before any work).
    ``threads``: intra-op threads per process (spawned workers and torchrun ranks).
    ``backend``: ``"gloo"`` (CPU) or ``"nccl"`` (one GPU per process).  ``fn`` and ``args`` must
    be picklable (a module-level function) when processes are spawned.  In ``fn``, the default
    process group exists whenever the world has more than one process.
    """
    if launched_by_torchrun():
        size = world_size(nproc)
        torch.set_num_threads(threads)
        if size == 1:
            return fn(*args)
        return _run_torchrun_rank(fn, args, backend)
    if nproc is None or nproc == 1:
        return fn(*args)
    return run_workers(fn, nproc, args, threads=threads, backend=backend, timeout_s=timeout_s)[0]


_BOUND_TO_AGENT = False


def die_with_agent() -> None:
    """Under torchrun: end this worker when its agent dies, even by SIGKILL (no orphans; idempotent).

    torchrun stops its workers when it is stopped by a signal it can handle; a killed agent
    cannot, so the worker watches for it itself.  The CLI calls this first thing.
    """
    global _BOUND_TO_AGENT
    if launched_by_torchrun() and not _BOUND_TO_AGENT:
        _BOUND_TO_AGENT = True
        _die_with_parent(os.getppid())
        import faulthandler

        faulthandler.enable()  # a rank that crashes in native code says where (torchrun shows its stderr)


def _run_torchrun_rank(fn: Callable[..., Any], args: tuple[Any, ...], backend: str) -> Any:
    die_with_agent()
    init_from_env(backend)
    heartbeat = _Heartbeat.start()
    failed = False
    try:
        value = fn(*args)
        return value if dist.get_rank() == 0 else None
    except (RuntimeError, dist.DistBackendError, ConnectionError) as error:
        if isinstance(error, TorchPintError) or heartbeat is None:
            raise
        gone = heartbeat.gone_peers()
        if not gone:
            raise
        failed = True
        raise WorkerError(f"rank {dist.get_rank()} stopped: {', '.join(gone)} failed or died "
                          f"({'its connection closed' if _is_broken_link(str(error)) else _first_line(str(error))})") from None
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        if dist.is_initialized() and not failed:  # with a dead peer, tearing the group down may wait on it
            dist.destroy_process_group()


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:300] if lines else "no message"


class _Heartbeat:
    """Each rank's ``torchpint/hb/<attempt>/<rank>`` key in torchrun's job store, refreshed every 0.2 s.

    Its own store client (a second connection to torchrun's store) keeps the thread from
    interleaving with the process group's use of the store.  When a collective fails, the ranks
    whose key stopped moving are the ones that died; the keys also hold each rank's host name.
    """

    def __init__(self, store: Any, rank_: int, size: int) -> None:
        self.store, self.rank, self.size = store, rank_, size
        self.host = f"node {os.environ.get('GROUP_RANK', '?')} ({socket.gethostname()})"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="torchpint-heartbeat", daemon=True)

    @classmethod
    def start(cls) -> _Heartbeat | None:
        try:  # a connection of its own: the thread must not interleave with other users of job_store()
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                  timeout=timedelta(seconds=10))
        except Exception:  # noqa: BLE001 - without a store the failure message is less precise, nothing worse
            return None
        beat = cls(store, dist.get_rank(), dist.get_world_size())
        beat._touch()
        beat.thread.start()
        return beat

    def _key(self, rank_: int) -> str:  # per attempt: a failed attempt's stale beats must not count
        return f"torchpint/hb/{attempt_token()}/{rank_}"

    def _touch(self) -> None:
        self.store.set(self._key(self.rank), f"{time.time():.3f} {self.host}")

    def _beat(self) -> None:
        while not self.stopping.wait(_HEARTBEAT_S):
            try:
                self._touch()
            except Exception:  # noqa: BLE001 - the store went away: the run is ending anyway
                return

    def gone_peers(self) -> list[str]:
        """``"rank R on node N (HOST)"`` for every other rank whose heartbeat is stale (waits up to ~1.5 s)."""
        deadline = time.time() + _STALE_S + 0.5
        while True:
            now = time.time()
            gone = []
            for peer in range(self.size):
                if peer == self.rank:
                    continue
                try:
                    if not self.store.check([self._key(peer)]):
                        continue  # it never beat in this attempt: nothing to say about it
                    stamp, host = self.store.get(self._key(peer)).decode().split(" ", 1)
                except Exception:  # noqa: BLE001 - the store itself is gone (its host died)
                    return [f"the rank(s) on the rendezvous host {os.environ.get('MASTER_ADDR', '?')}"]
                if now - float(stamp) > _STALE_S:
                    gone.append(f"rank {peer} on {host}")
            # The deadline against the time of this pass's view, not the time after it: on a
            # loaded machine the store calls of a pass can take long, and a pass begun just before
            # a dead peer's beat went stale must not be the last one.
            if gone or now > deadline:
                return gone
            time.sleep(0.2)

    def stop(self) -> None:
        # Joined, not just signalled: a daemon thread still inside a store call while the
        # interpreter shuts down can crash the process at exit, and torchrun then reports a
        # finished rank as failed (its peer's agent waits out its exit barrier).
        self.stopping.set()
        self.thread.join(timeout=5)


# ---------------------------------------------------------------------------- local workers
def _die_with_parent(launcher: int) -> None:
    """Make this worker die with its launcher, however the launcher dies (even by SIGKILL).

    Workers are forked by multiprocessing's fork server, which exits when every holder of its
    "alive" pipe is gone: the launcher and, by inheritance, every worker.  A worker therefore
    closes its copy (it starts no processes itself), so the server exits with the launcher, and
    the kernel's death signal (``PR_SET_PDEATHSIG``, Linux) takes the worker down with it.  A
    thread that polls the launcher's pid is the second line (and the only one elsewhere).
    """
    try:
        from multiprocessing import forkserver

        server = getattr(forkserver, "_forkserver", None)
        alive_fd = getattr(server, "_forkserver_alive_fd", None)
        if alive_fd is not None:
            os.close(alive_fd)
            server._forkserver_alive_fd = None
    except (ImportError, OSError):
        pass
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if not _alive(launcher):  # the launcher died before any of this took effect
        os._exit(1)

    def watch() -> None:
        while _alive(launcher):
            time.sleep(0.25)
        os._exit(1)

    threading.Thread(target=watch, name="torchpint-launcher-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: imported once by the fork server that starts local workers, so that each worker starts in
#: milliseconds instead of importing torch anew (about 2 s of CPU per worker on a small machine)
_PRELOAD = ["torch", "torchpint.cli.main"]


class _LauncherFd:
    """One of the launcher's file descriptors, handed to a worker when the worker is started.

    The fork server's own stdout/stderr are those of the moment it started; a worker must
    write where its launcher writes now (a redirected or captured stream, a log file).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:  # pickled while the worker starts: the fd travels with it
        from multiprocessing import reduction

        return (_detach_fd, (reduction.DupFd(self.fd),))


def _detach_fd(dup: Any) -> int:
    return int(dup.detach())


def _adopt_streams(stdout: int, stderr: int) -> None:
    import sys

    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    os.dup2(stdout, 1)
    os.dup2(stderr, 2)


def _context() -> Any:
    """multiprocessing's fork server, with torch and torchpint preloaded (the start method of local workers).

    Like 'spawn' (which it replaces) each worker is a fresh interpreter state as far as the
    caller's script goes: the main module is re-imported and ``fn`` must be picklable.  The fork
    server itself is started once per launcher; no thread or CUDA state exists in it to inherit.
    """
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def _worker(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    rank_: int,
    nproc: int,
    port: int,
    token: str,
    threads: int,
    backend: str,
    parent: int,
    environment: dict[str, str],
    streams: tuple[int, int],
    results: Any,
) -> None:
    _die_with_parent(parent)
    _adopt_streams(*streams)
    os.environ.clear()  # the launcher's environment now, not the fork server's from when it started
    os.environ.update(environment)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the launcher decides
    results.put((rank_, "started", None))
    os.environ.update(
        {
            "RANK": str(rank_),
            "LOCAL_RANK": str(rank_),
            "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            _LAUNCH_TOKEN_ENV: token,
        }
    )
    torch.set_num_threads(threads)
    try:
        init_from_env(backend)
        value = fn(*args)
        results.put((rank_, "ok", value))
    except BaseException as error:  # noqa: BLE001 - everything goes back to the parent
        detail = traceback.format_exc() if os.environ.get("TORCHPINT_DEBUG") else ""
        results.put((rank_, "error", (_error_kind(error), f"{type(error).__name__}: {error}\n{detail}".rstrip())))
        results.close()
        results.join_thread()
        os._exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@contextmanager
def _signals_raise() -> Iterator[None]:
    """While workers run, SIGTERM/SIGINT to the launcher raise :class:`Interrupted` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        for s in (signal.SIGTERM, signal.SIGINT):  # a second signal must not interrupt the clean-up
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_workers(
    fn: Callable[..., Any],
    nproc: int,
    args: tuple[Any, ...] = (),
    *,
    threads: int = 1,
    backend: str = "gloo",
    timeout_s: float | None = None,
) -> list[Any]:
    """Run ``fn(*args)`` on ``nproc`` supervised local processes; their results in rank order.

    Prefer :func:`launch` (it also serves torchrun); this is the local mode, for callers that
    need every rank's result (tests, benchmarks).  Raises :class:`WorkerError` when a worker
    raises or dies, :class:`Interrupted` on SIGTERM/SIGINT, after stopping all the others.
    """
    _leave_if_bootstrapping()
    if nproc < 1:
        raise ConfigError(f"nproc must be >= 1, got {nproc}")
    for attempt in range(_PORT_ATTEMPTS):
        try:
            return _run_workers_once(fn, nproc, args, threads, backend, timeout_s)
        except _StorePortTaken:  # (reported by a worker, raised again here by _raise_diagnosis)
            if attempt == _PORT_ATTEMPTS - 1:
                raise WorkerError(f"the workers could not set up their store: {_PORT_ATTEMPTS} free ports in a row were "
                                  "taken by other processes before the workers could listen on them") from None
    raise AssertionError("unreachable")


_PORT_ATTEMPTS = 5


def _run_workers_once(
    fn: Callable[..., Any], nproc: int, args: tuple[Any, ...], threads: int, backend: str, timeout_s: float | None
) -> list[Any]:
    ctx = _context()
    results = ctx.Queue()
    port, token = free_port(), os.urandom(8).hex()
    procs = [
        ctx.Process(target=_worker, args=(fn, args, r, nproc, port, token, threads, backend, os.getpid(),
                                          dict(os.environ), (_LauncherFd(1), _LauncherFd(2)), results),
                    daemon=True)
        for r in range(nproc)
    ]
    values: dict[int, Any] = {}
    errors: dict[int, tuple[str, str]] = {}
    started: set[int] = set()
    begin = time.monotonic()
    with _signals_raise():
        try:
            try:
                for proc in procs:
                    proc.start()
            except RuntimeError as error:
                if "bootstrapping" in str(error):
                    raise WorkerError(f"could not start worker processes: {_MAIN_GUARD_HINT}") from None
                raise
            while len(values) < nproc:
                try:
                    r, status, value = results.get(timeout=0.05)
                except queue_module.Empty:
                    if any(p.exitcode not in (None, 0) for p in procs):
                        raise _raise_diagnosis(procs, results, errors, started) from None
                    if timeout_s is not None and time.monotonic() - begin > timeout_s:
                        raise WorkerError(f"workers did not finish within {timeout_s:.0f} s; stopped them") from None
                    continue
                if status == "started":
                    started.add(r)
                elif status == "error":
                    errors[r] = value
                    raise _raise_diagnosis(procs, results, errors, started)
                else:
                    values[r] = value
            for proc in procs:
                proc.join(timeout=30)
            return [values[r] for r in range(nproc)]
        finally:
            _stop(procs)


#: exit code of a worker that found itself re-running the caller's unguarded script while it started
_UNGUARDED_MAIN_EXIT = 87


def _leave_if_bootstrapping() -> None:
    """In a worker that is still importing the caller's script, leave quietly with a code the parent explains.

    Without this, multiprocessing raises its RuntimeError in every worker (a long traceback each)
    and the parent sees only workers that died.
    """
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        os._exit(_UNGUARDED_MAIN_EXIT)


def _stop(procs: list[Any]) -> None:
    """SIGTERM every live worker, SIGKILL what is left after 1 s: all gone within ~1.2 s."""
    for proc in procs:
        if proc.pid is not None and proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + 1.0
    for proc in procs:
        if proc.pid is not None:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.pid is not None and proc.is_alive():
            proc.kill()
            proc.join(timeout=1.0)


def _raise_diagnosis(procs: list[Any], results: Any, errors: dict[int, tuple[str, str]], started: set[int]) -> WorkerError:
    kind, message = _diagnose(procs, results, errors, started)
    if any(k == "port" for k, _ in errors.values()):  # the store's port was lost: the others failed from that
        raise _StorePortTaken(message)
    return _ERROR_CLASSES.get(kind, WorkerError)(message)


def _diagnose(procs: list[Any], results: Any, errors: dict[int, tuple[str, str]], started: set[int]) -> tuple[str, str]:
    """Name the root cause: a worker that died, or raised first-hand, beats the peers whose links broke."""
    time.sleep(0.3)  # let the other workers report or exit
    while True:
        try:
            r, status, value = results.get_nowait()
        except queue_module.Empty:
            break
        if status == "started":
            started.add(r)
        elif status == "error":
            errors.setdefault(r, value)
    nproc = len(procs)
    if any(proc.exitcode == _UNGUARDED_MAIN_EXIT for proc in procs):
        return "", f"the workers could not start: {_MAIN_GUARD_HINT}"
    for r, proc in enumerate(procs):
        if proc.exitcode not in (None, 0) and r not in errors:
            if r not in started:
                return "", f"worker {r} of {nproc} exited before it started (exit code {proc.exitcode}): {_MAIN_GUARD_HINT}"
            return "", f"worker {r} of {nproc} died (exit code {proc.exitcode}); stopped the others"
    causes = [r for r in sorted(errors) if not _is_broken_link(errors[r][1])] or sorted(errors)
    kind, message = errors[causes[0]]
    return kind, f"worker {causes[0]} of {nproc} failed: {_first_line(message)[:500]}"
