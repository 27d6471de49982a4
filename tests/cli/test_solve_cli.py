"""`torchpint solve`: output contract, plots, clear errors, worker failures."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from torchpint.cli.main import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torchpint", *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def test_json_is_the_last_line_and_plot_is_written(tmp_path: Path, capsys) -> None:
    png = tmp_path / "conv.png"
    code = main(["solve", "dahlquist", "--tol", "1e-10", "--json", "--plot", str(png)])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    summary = json.loads(out[-1])
    assert summary["iterations"] == len(summary["residuals"]) == 5
    assert f"{summary['residuals'][0]:.4g}" == "7.186e-05"
    assert summary["seconds"] > 0
    assert any("iter   2" in line and "conv. factor" in line for line in out)
    assert png.stat().st_size > 1000


@pytest.mark.parametrize(
    "args, message",
    [
        (["heat1d", "--nt", "64", "--levels", "3"], "not compatible with the coarsening"),
        (["heat1d", "--cf", "1"], "cf must be >= 2"),
        (["heat1d", "--levels", "12"], "more levels than the grid allows"),
        (["heat1d", "--tol", "-1"], "tol must be"),
        (["heat1d", "--nx", "2"], "--nx must be >= 4"),
        (["dahlquist", "--nproc", "0"], "nproc must be >= 1"),
        (["dahlquist", "--cf", "two"], "--cf must be an integer"),
        (["heat1d", "--cf", "4,0", "--levels", "2"], "--cf must be one factor or one per coarsening (--levels 2: 1), got 2"),
        (["heat1d", "--cf", "4,0", "--levels", "3"], "--cf must be >= 2, got 0"),
        (["heat1d", "--nx", "3"], "--nx must be >= 4 (heat1d needs at least 2 interior points), got 3"),
        (["heat1d", "--max-iter", "0"], "--max-iter must be >= 1, got 0"),
        (["dahlquist", "--nproc", "200"], "--nproc 200 cannot be used: more processes than the 101 time points"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(capsys, args: list[str], message: str) -> None:
    assert main(["solve", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err


def test_nan_is_reported_with_its_iteration(capsys) -> None:
    assert main(["solve", "heat1d", "--no-nested", "--inject-fault", "nan:300"]) == 1
    assert "not finite" in capsys.readouterr().err


@pytest.mark.slow
def test_parallel_run_matches_serial_through_the_cli() -> None:
    serial = run_cli("solve", "heat1d", "--levels", "3", "--json")
    parallel = run_cli("solve", "heat1d", "--levels", "3", "--json", "--nproc", "2")
    assert serial.returncode == parallel.returncode == 0, parallel.stderr
    a, b = (json.loads(p.stdout.strip().splitlines()[-1]) for p in (serial, parallel))
    assert a["residuals"] == pytest.approx(b["residuals"], rel=1e-12)


@pytest.mark.slow
def test_dead_worker_stops_the_run_within_seconds() -> None:
    start = time.monotonic()
    proc = run_cli("solve", "heat1d", "--nt", "1025", "--levels", "4", "--tol", "0", "--max-iter", "50",
                   "--nproc", "2", "--inject-fault", "exit:400:1", timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 1
    assert "worker 1 of 2 died" in proc.stderr and "Traceback" not in proc.stderr
    assert elapsed < 30  # start-up of two workers included; the failure itself is seen in < 1 s


@pytest.mark.parametrize("lam", ["-1e5", "-2.5E-1", "-1e+2"])
def test_negative_numbers_in_scientific_notation_are_values(capsys, lam: str) -> None:
    assert main(["solve", "dahlquist", "--lam", lam, "--levels", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["config"]["lam"] == float(lam)
    # an option-looking word is still refused with argparse's one line
    with pytest.raises(SystemExit):
        main(["solve", "dahlquist", "--lam", "-x"])


def test_plot_into_an_existing_folder_writes_and_prints_one_real_path(tmp_path: Path, capsys) -> None:
    assert main(["solve", "dahlquist", "--levels", "2", "--plot", str(tmp_path)]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("convergence plot: ")]
    assert len(line) == 1
    path = Path(line[0].removeprefix("convergence plot: "))
    assert path.is_absolute() and path.parent == tmp_path.resolve() and path.stat().st_size > 1000
    assert main(["solve", "dahlquist", "--levels", "2", "--plot", str(tmp_path / "conv")]) == 0
    printed = capsys.readouterr().out.splitlines()[-1].removeprefix("convergence plot: ")
    assert printed == str((tmp_path / "conv.png").resolve()) and Path(printed).is_file()
