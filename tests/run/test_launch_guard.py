"""The launcher: a script without the __main__ guard gets one clear error; SIGTERM leaves nothing behind."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from torchpint.testing.processes import descendants

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

UNGUARDED = """
from torchpint.cli.solve import SolveConfig, solve_worker
from torchpint.run import run_workers

print(run_workers(solve_worker, 2, (SolveConfig(problem="dahlquist", verbose=False),))[0]["iterations"])
"""


@pytest.mark.slow
def test_a_script_without_the_main_guard_gets_one_clear_error(tmp_path: Path) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=ENV,
                          cwd=tmp_path)
    assert done.returncode != 0
    assert 'if __name__ == "__main__":' in done.stderr
    assert "WorkerError: the workers could not start" in done.stderr
    # the workers left quietly: no multiprocessing traceback from each of them
    assert "bootstrapping phase" not in done.stderr and done.stderr.count("Traceback") == 1
    guarded = tmp_path / "guarded.py"
    guarded.write_text("if __name__ == '__main__':\n" + "".join(f"    {line}\n" for line in UNGUARDED.splitlines()))
    done = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True, timeout=120, env=ENV,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_the_workers_without_leaked_semaphores() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "torchpint", "solve", "heat1d", "--nt", "4097", "--nx", "1025",
                             "--levels", "2", "--cf", "2", "--tol", "1e-14", "--max-iter", "1000", "--nproc", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 4:  # 2 workers, the fork server, the resource tracker
        time.sleep(0.2)
        workers = descendants(proc.pid)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=30)[1]
    assert proc.returncode == 128 + signal.SIGTERM
    assert "leaked semaphore" not in stderr and "Traceback" not in stderr, stderr
    time.sleep(1.0)
    alive = [pid for pid in workers if os.path.exists(f"/proc/{pid}") and
             "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()]
    assert not alive, f"processes left running: {alive}"
