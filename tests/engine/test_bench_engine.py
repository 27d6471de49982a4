"""The engine benchmarks: bad input refused with one line before any timing; trace_engine.py's timeline shows an iteration."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_engine.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_unknown_revision() -> None:
    proc = run("--baseline", "no-such-revision-xyz", "--cases", "2", "--rounds", "1")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == ["unknown git revision 'no-such-revision-xyz'"]


def test_unknown_case() -> None:
    proc = run("--cases", "3")
    assert proc.returncode != 0
    assert "unknown case(s) 3" in proc.stderr.strip().splitlines()[-1]


TRACE = SCRIPT.with_name("trace_engine.py")


def test_trace_timeline_refuses_iteration_one() -> None:
    proc = subprocess.run([sys.executable, str(TRACE), "--timeline", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "--timeline needs an iteration K >= 2" in proc.stderr.strip().splitlines()[-1]


def test_trace_timeline_shows_every_kernel_of_the_iteration() -> None:
    """Iteration 3 of case 2 on one process: its span, and one line per kernel call (24 for 4 levels)."""
    proc = subprocess.run([sys.executable, str(TRACE), "--case", "2", "--timeline", "3"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    start = lines.index("iteration 3, ms from its start (the end of the previous residual check):")
    assert lines[start + 1].startswith("  rank 0: ")
    kernels = [line for line in lines[start + 2:] if " r0 kernel " in line]
    times = [float(line.split()[0]) for line in kernels]
    assert times == sorted(times) and len(kernels) >= 10


def test_floor_cases_report_the_engine_floor_per_iteration(tmp_path: Path) -> None:
    """Case 1's cycles on states of 3 values, 1 and 2 processes: the same residual history (to the
    rounding of the norm's sum over ranks), and the floor per iteration printed and saved for both."""
    out = tmp_path / "floor.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cases", "1n5,1n5p2", "--rounds", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "the engine's floor, ms per iteration" in proc.stdout
    import json

    record = json.loads(out.read_text())
    floor = record["floor_ms_per_iter"]["working tree"]
    assert set(floor) == {"1n5", "1n5p2"} and all(0 < v < 1000 for v in floor.values())
    table = record["table"]
    one, two = (table[n]["working tree"]["residuals"] for n in ("1n5", "1n5p2"))
    assert len(one) == len(two) and all(abs(a - b) <= 1e-13 * b for a, b in zip(one, two))
