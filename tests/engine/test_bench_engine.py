"""benchmarks/bench_engine.py refuses bad input with one line, before any timing."""

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
