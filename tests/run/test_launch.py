"""The launcher: modes, world-size checks, supervision, signals, no orphans."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch.distributed as dist

from torchpint.errors import ConfigError
from torchpint.run.launch import WorkerError, launch, run_workers, world_size
from torchpint.testing.processes import alive


def _rank_and_size(tag: str) -> tuple[str, int, int]:
    return tag, dist.get_rank(), dist.get_world_size()


def _fail_on_rank_1() -> None:
    if dist.get_rank() == 1:
        raise ConfigError("rank 1 refuses")
    dist.barrier()


def test_one_process_and_local_processes() -> None:
    assert launch(len, ("abc",)) == 3
    assert launch(_rank_and_size, ("x",), nproc=2) == ("x", 0, 2)
    with pytest.raises(WorkerError, match="worker 1 of 2 failed: ConfigError: rank 1 refuses"):
        launch(_fail_on_rank_1, nproc=2)


def test_a_store_port_taken_before_the_workers_listen_is_replaced(monkeypatch) -> None:
    """The launcher picks a free port, rank 0 binds it moments later: meanwhile another process may take it.

    Once by a plain server (rank 0 cannot listen), once by another launch's store (the other
    ranks would join it: they check its token): each time the workers start again on another port.
    """
    launch_module = sys.modules["torchpint.run.launch"]
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        other = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False)
        other.set("torchpint/launch", "another launch's token")
        taken = [server.getsockname()[1], other.port]
        real, picked = launch_module.free_port, []

        def pick() -> int:
            picked.append(taken[len(picked)] if len(picked) < len(taken) else real())
            return picked[-1]

        monkeypatch.setattr(launch_module, "free_port", pick)
        assert run_workers(_rank_and_size, 2, ("x",)) == [("x", 0, 2), ("x", 1, 2)]
        assert picked[:2] == taken and len(picked) == 3


def test_store_ports_always_taken_give_one_clear_error(monkeypatch) -> None:
    launch_module = sys.modules["torchpint.run.launch"]
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(launch_module, "free_port", lambda: server.getsockname()[1])
        start = time.monotonic()
        with pytest.raises(WorkerError, match="5 free ports in a row were taken by other processes"):
            run_workers(_rank_and_size, 2, ("x",))
        assert time.monotonic() - start < 30


def test_world_size_checks(monkeypatch) -> None:
    assert world_size(None) == 1 and world_size(3) == 3
    with pytest.raises(ConfigError, match="--nproc must be >= 1"):
        world_size(0)
    with pytest.raises(ConfigError, match="--nproc 3 cannot be used: needs 1 or 2"):
        world_size(3, allowed=lambda n: None if n in (1, 2) else "needs 1 or 2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert world_size(None) == world_size(4) == 4
    with pytest.raises(ConfigError, match="--nproc 2 disagrees with torchrun's world size 4"):
        world_size(2)
    with pytest.raises(ConfigError, match="torchrun's world size 4 cannot be used"):
        world_size(None, allowed=lambda n: "too many")


SCRIPT = textwrap.dedent(
    """
    import os, pathlib, sys, time
    from torchpint.run.launch import launch

    def work():
        pathlib.Path(sys.argv[1], f"worker-{os.getpid()}").touch()
        time.sleep(60)

    if __name__ == "__main__":
        launch(work, nproc=2)
        print("launch returned", file=sys.stderr)
    """
)


def _start_workers(tmp_path) -> tuple[subprocess.Popen, list[int]]:
    """A script whose launcher runs two sleeping workers; its process and the workers' pids, once they work."""
    script = tmp_path / "two.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    start = time.monotonic()
    while len(marks := list(tmp_path.glob("worker-*"))) < 2:
        assert proc.poll() is None and time.monotonic() - start < 120, f"no workers: {proc.stderr.read()[-1000:]}"
        time.sleep(0.1)
    return proc, [int(m.name.split("-")[1]) for m in marks]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_signal_to_the_launcher_stops_every_worker_within_2_s(tmp_path, sig) -> None:
    proc, pids = _start_workers(tmp_path)
    proc.send_signal(sig)
    start = time.monotonic()
    while any(alive(p) for p in pids) and time.monotonic() - start < 5:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids), "orphaned workers"
    assert time.monotonic() - start < 2.0 * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))  # (oversubscribed)
    proc.wait(timeout=10)
    if sig != signal.SIGKILL:
        assert f"stopped by {sig.name}" in proc.stderr.read()
