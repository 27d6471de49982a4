"""Start ``torchpint`` under torchrun as several machines would, on this one: a harness for the tests.

``torchrun_agents(["mgrit-train", "xor", ...], nnodes=2)`` starts ``nnodes`` torchrun agents
(``python -m torch.distributed.run --nnodes N --nproc-per-node P --rdzv-backend c10d
--rdzv-endpoint 127.0.0.1:PORT --node-rank i -m torchpint ...``), each as its own process
group, waits for all of them and returns their exit codes and output.  A run that outlives
``timeout_s`` is killed (every agent and its workers) and reported as a failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass

from torchpint.run.launch import free_port


@dataclass
class AgentResult:
    node_rank: int
    returncode: int
    stdout: str
    stderr: str


def torchrun_agents(args: list[str], *, nnodes: int = 2, nproc_per_node: int = 1, timeout_s: float = 240.0,
                    extra: list[str] | None = None, cwd: str | None = None) -> list[AgentResult]:
    """Run ``torchpint <args>`` under ``nnodes`` torchrun agents on 127.0.0.1 (c10d rendezvous)."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs = []
    for node in range(nnodes):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc-per-node",
                   str(nproc_per_node), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                   "--node-rank", str(node), *(extra or []), "-m", "torchpint", *args]
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                      cwd=cwd, start_new_session=True))
    results = []
    try:
        for node, proc in enumerate(procs):
            out, err = proc.communicate(timeout=timeout_s)
            results.append(AgentResult(node, proc.returncode, out, err))
    except subprocess.TimeoutExpired:
        for proc in procs:
            _kill_group(proc)
        raise
    return results


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the agent and the workers it started
    except ProcessLookupError:
        pass
    proc.communicate()
