"""Processes for the tests: torchrun agents started as on several machines, the process table.

``agents(["solve", "heat1d"], nnodes=2, nproc_per_node=1)`` starts ``nnodes`` processes of
``python -m torch.distributed.run --nnodes N --nproc-per-node P --rdzv-backend c10d
--rdzv-endpoint 127.0.0.1:PORT [--max-restarts R] -m torchpint ...``, one intra-op thread per
process, as two machines would; :func:`finish` waits and returns each agent's exit code, stdout
and stderr.  The agents' output is read as it comes (a thread per pipe), so a test may do other work
(the same run on local processes, for one) while they run.  Test support only: the library never spawns.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from torchpint.run.launch import free_port

_next_port: dict[int, int] = {}

__all__ = ["Agent", "agents", "alive", "descendants", "finish", "json_result", "isolated_port"]


@dataclass
class Agent:
    proc: subprocess.Popen[str]
    stdout: str = ""
    stderr: str = ""
    _chunks: dict[str, list[str]] = field(default_factory=lambda: {"stdout": [], "stderr": []}, repr=False)
    _readers: list[threading.Thread] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        for name in ("stdout", "stderr"):
            reader = threading.Thread(target=_drain, args=(getattr(self.proc, name), self._chunks[name]), daemon=True)
            reader.start()
            self._readers.append(reader)

    def collect(self, timeout: float | None = None) -> tuple[str, str]:
        """Once the agent has ended: its stdout and stderr (also set as ``stdout``, ``stderr``); read to
        their ends, or what came within ``timeout`` (a worker that outlives its agent holds them open)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for reader in self._readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self.stdout, self.stderr = "".join(self._chunks["stdout"]), "".join(self._chunks["stderr"])
        return self.stdout, self.stderr


def _drain(pipe: Any, chunks: list[str]) -> None:
    """Read ``pipe`` to its end (an agent never blocks on a full pipe while the test does other work)."""
    with pipe:
        for line in pipe:
            chunks.append(line)


#: How agents 1, 2, ... run torchrun: started with agent 0, they import it meanwhile, and begin the
#: rendezvous only once agent 0 serves the endpoint, as the machine named in ``--rdzv-endpoint`` does.
#: Started together on one host, either agent could bind the endpoint first and host the rendezvous
#: store; the one that does must outlive the other for torchrun to end cleanly (a test that kills a
#: rank would otherwise depend on which agent won the race).
_AFTER_AGENT_0 = """
import socket, sys, time
from torch.distributed.run import main
port, deadline = int(sys.argv[1]), time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        break
    except OSError:
        time.sleep(0.05)
main(sys.argv[2:])
"""


def isolated_port() -> int:
    """A free port for a test's rendezvous or process group that no concurrent test can be given.

    :func:`torchpint.run.launch.free_port` asks the kernel for a free ephemeral port and releases
    it; until the job binds it (an agent first imports torch), any outgoing connection, or another
    pytest-xdist worker's ``free_port``, may be given the same port.  Here each xdist worker takes
    its ports from a range of its own below the ephemeral range (32768 and up), which neither the
    kernel's choices nor the other workers touch; a port still bound (or in TIME_WAIT) is skipped.
    Outside xdist, or beyond 8 workers, it falls back to ``free_port``.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else -1
    if not 0 <= index < 8:
        return free_port()
    low, size = 20000 + 1500 * index, 1500
    start = _next_port.get(index, low + os.getpid() % size)
    for step in range(size):
        port = low + (start - low + step) % size
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _next_port[index] = low + (port - low + 1) % size
        return port
    return free_port()


def agents(command: list[str], *, nnodes: int = 2, nproc_per_node: int = 1, max_restarts: int = 0,
           env: dict[str, str] | None = None) -> list[Agent]:
    """Start ``nnodes`` torchrun agents of ``torchpint <command>`` on 127.0.0.1 (c10d rendezvous).

    Each agent leads a process group of its own (its workers included), so :func:`finish` can
    take a hung job down whole.
    """
    port = isolated_port()
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHPINT_BACKEND": "gloo", "PYTHONUNBUFFERED": "1",
                   **(env or {})}
    started = []
    for node in range(nnodes):
        args = ["--nnodes", str(nnodes), "--nproc-per-node", str(nproc_per_node), "--rdzv-backend", "c10d",
                "--rdzv-endpoint", f"127.0.0.1:{port}", "--node-rank", str(node), "--max-restarts", str(max_restarts),
                "--monitor-interval", "0.1", "-m", "torchpint", *command]
        run = ["-m", "torch.distributed.run"] if node == 0 else ["-c", _AFTER_AGENT_0, str(port)]
        started.append(Agent(subprocess.Popen([sys.executable, *run, *args], stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True, env=environment,
                                              start_new_session=True)))
    return started


def finish(started: list[Agent], timeout: float = 240) -> list[Agent]:
    """Wait for every agent (``timeout`` for all together); a job still running then is killed and fails.

    The failure shows every agent's output: the agent that hangs is often waiting on another
    one (torchrun's exit barrier), and the cause is in the other's output.
    """
    deadline = time.monotonic() + timeout
    try:
        for agent in started:
            agent.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            agent.collect(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        report = []
        for node, agent in enumerate(started):
            try:
                os.killpg(agent.proc.pid, signal.SIGKILL)  # the agent and the workers it started
            except ProcessLookupError:
                pass
            agent.proc.wait()
            out, err = agent.collect(timeout=10)
            report.append(f"--- agent {node} (exit {agent.proc.returncode}) stdout:\n{(out or '')[-3000:]}\n"
                          f"--- agent {node} stderr:\n{(err or '')[-3000:]}")
        raise AssertionError(f"torchrun agents still running after {timeout:.0f} s; killed.\n" + "\n".join(report)) from None
    return started


def json_result(started: list[Agent]) -> dict[str, Any]:
    """The one JSON line the run printed (rank 0's, on whichever agent it ran)."""
    lines = [line for agent in started for line in agent.stdout.splitlines() if line.startswith("{")]
    if len(lines) != 1:
        raise AssertionError(f"expected one JSON line, got {len(lines)}: " + " | ".join(a.stderr[-800:] for a in started))
    return dict(json.loads(lines[0]))


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` in the process table."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.split()
    children: dict[int, list[int]] = {}
    for child, parent in zip(out[::2], out[1::2]):
        children.setdefault(int(parent), []).append(int(child))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
