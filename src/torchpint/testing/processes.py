"""Processes for the tests: torchrun agents started as on several machines, the process table.

``agents(["solve", "heat1d"], nnodes=2, nproc_per_node=1)`` starts ``nnodes`` processes of
``python -m torch.distributed.run --nnodes N --nproc-per-node P --rdzv-backend c10d
--rdzv-endpoint 127.0.0.1:PORT [--max-restarts R] -m torchpint ...``, one intra-op thread per
process, as two machines would; :func:`finish` waits and returns each agent's exit code, stdout
and stderr.  Test support only: the library never spawns.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from torchpint.run.launch import free_port

__all__ = ["Agent", "agents", "alive", "descendants", "finish", "json_result"]


@dataclass
class Agent:
    proc: subprocess.Popen[str]
    stdout: str = ""
    stderr: str = ""


def agents(command: list[str], *, nnodes: int = 2, nproc_per_node: int = 1, max_restarts: int = 0,
           env: dict[str, str] | None = None) -> list[Agent]:
    """Start ``nnodes`` torchrun agents of ``torchpint <command>`` on 127.0.0.1 (c10d rendezvous).

    Each agent leads a process group of its own (its workers included), so :func:`finish` can
    take a hung job down whole.
    """
    port = free_port()
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHPINT_BACKEND": "gloo", "PYTHONUNBUFFERED": "1",
                   **(env or {})}
    started = []
    for node in range(nnodes):
        argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc-per-node",
                str(nproc_per_node), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                "--node-rank", str(node), "--max-restarts", str(max_restarts), "--monitor-interval", "0.1",
                "-m", "torchpint", *command]
        started.append(Agent(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                              env=environment, start_new_session=True)))
        if node == 0:
            _wait_for_listener(port, started[0])
    return started


def _wait_for_listener(port: int, agent: Agent, timeout: float = 60) -> None:
    """Until agent 0 serves the rendezvous endpoint, as the machine named in ``--rdzv-endpoint`` does.

    Started together on one host, either agent could bind the endpoint first and host the
    rendezvous store; the one that does must outlive the other for torchrun to end cleanly
    (a test that kills a rank would otherwise depend on which agent won the race)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and agent.proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)


def finish(started: list[Agent], timeout: float = 240) -> list[Agent]:
    """Wait for every agent (``timeout`` for all together); a job still running then is killed and fails.

    The failure shows every agent's output: the agent that hangs is often waiting on another
    one (torchrun's exit barrier), and the cause is in the other's output.
    """
    deadline = time.monotonic() + timeout
    try:
        for agent in started:
            agent.stdout, agent.stderr = agent.proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        report = []
        for node, agent in enumerate(started):
            try:
                os.killpg(agent.proc.pid, signal.SIGKILL)  # the agent and the workers it started
            except ProcessLookupError:
                pass
            out, err = agent.proc.communicate()
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
