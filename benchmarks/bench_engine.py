"""Engine speed: torchpint's MGRIT against PyMGRIT on the same problem, in one run.

Heat1D (PyMGRIT's discretisation) with nx = 2049, nt = 1025, 5 levels, cf = 4, FCF, V-cycle,
no nested iteration, tol = 1e-9.  Both serial on one core (one thread), then torchpint
with only C-points kept on the intermediate levels (``coarse_storage="c"``), then time-parallel
on 2 processes.  The residual histories must agree; the ratios and the states each run holds
are printed.

    .venv/bin/python benchmarks/bench_engine.py [--pymgrit-python /work/pymgrit-venv/bin/python]

PyMGRIT needs its own virtual environment (numpy<2.3, mpich, mpi4py, pymgrit==1.0.6; see
benchmarks/pymgrit_reference.py); without it the script says so and times torchpint alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from torchpint.cli.plots import plot_residuals
from torchpint.cli.solve import SolveConfig, solve_worker
from torchpint.run.launch import run_workers

HERE = Path(__file__).resolve().parent
CONFIG = SolveConfig(problem="heat1d", nx=2049, nt=1025, levels=5, cf=[4], relax="FCF", cycle="V",
                     nested=False, tol=1e-9, max_iter=100, verbose=False)


def time_pymgrit(python: str) -> dict | None:
    """PyMGRIT's own solve time for the same configuration ('k' of pymgrit_reference.py)."""
    if not Path(python).exists():
        print(f"PyMGRIT interpreter {python} not found: skipping the peer (see pymgrit_reference.py)")
        return None
    mpiexec = shutil.which("mpiexec", path=str(Path(python).parent)) or "mpiexec"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [mpiexec, "-n", "1", python, str(HERE / "pymgrit_reference.py"), "--worker", "k"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("@@RECORD@@"):
            return json.loads(line[len("@@RECORD@@"):])
    print("PyMGRIT failed:", proc.stderr[-2000:])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pymgrit-python", default="/work/pymgrit-venv/bin/python")
    parser.add_argument("--repeat", type=int, default=3, help="torchpint runs (best is reported)")
    parser.add_argument("--out", default=str(HERE / "results" / "engine.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    print("torchpint, 1 process, 1 thread ...", flush=True)
    serial = min((solve_worker(CONFIG) for _ in range(args.repeat)), key=lambda s: s["seconds"])
    print("torchpint, 1 process, C-points only on the intermediate levels ...", flush=True)
    lean_config = replace(CONFIG, coarse_storage="c")
    lean = min((solve_worker(lean_config) for _ in range(args.repeat)), key=lambda s: s["seconds"])
    print("torchpint, 2 processes (gloo), 1 thread each ...", flush=True)
    parallel = min(
        (run_workers(solve_worker, 2, (CONFIG,))[0] for _ in range(args.repeat)), key=lambda s: s["seconds"]
    )
    print("PyMGRIT 1.0.6, 1 MPI process, 1 thread ...", flush=True)
    peer = time_pymgrit(args.pymgrit_python)

    def held(run: dict) -> str:
        return str(sum(run["states_per_level"]))

    rows = [("torchpint, 1 process", serial["seconds"], serial["iterations"], serial["residuals"], held(serial))]
    rows.append(("torchpint, 1 proc, C-only", lean["seconds"], lean["iterations"], lean["residuals"], held(lean)))
    rows.append(("torchpint, 2 processes", parallel["seconds"], parallel["iterations"], parallel["residuals"],
                 f"{held(parallel)} on rank 0"))
    if peer:
        rows.append(("PyMGRIT 1.0.6, 1 process", peer["seconds"], peer["iterations"], peer["residuals"], "-"))
    reference = serial["residuals"]
    print(f"\nHeat1D nx={CONFIG.nx}, nt={CONFIG.nt}, {CONFIG.levels} levels, cf=4, FCF, V-cycle, no nested, tol=1e-9")
    print(f"{'run':28s} {'solve s':>9s} {'iters':>6s} {'max rel. diff of history':>26s} {'speedup vs PyMGRIT':>20s}"
          f" {'states held':>16s}")
    for name, seconds, iterations, residuals, states in rows:
        diff = max(abs(a - b) / b for a, b in zip(residuals, reference)) if len(residuals) == len(reference) else float("nan")
        ratio = f"{peer['seconds'] / seconds:.1f}x" if peer else "-"
        print(f"{name:28s} {seconds:9.3f} {iterations:6d} {diff:26.2e} {ratio:>20s} {states:>16s}")
    print(f"\ntorchpint 2 processes vs 1 process: {serial['seconds'] / parallel['seconds']:.2f}x")
    phases = ", ".join(f"{k} {v:.3f}" for k, v in sorted(serial["phase_seconds"].items()))
    print(f"torchpint serial phases (s): {phases}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "config": asdict(CONFIG), "torchpint_serial": serial, "torchpint_serial_c_only": lean,
        "torchpint_2proc": parallel, "pymgrit": peer,
        "speedup_vs_pymgrit": peer["seconds"] / serial["seconds"] if peer else None,
        "parallel_speedup_2proc": serial["seconds"] / parallel["seconds"],
        "torch": torch.__version__, "python": sys.version.split()[0], "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    out.write_text(json.dumps(record, indent=1))
    histories = {name: residuals for name, _, _, residuals, _ in rows}
    plot_residuals(histories, str(out.with_suffix(".png")), title="Heat1D, 5 levels, cf=4, FCF, V")
    print(f"results: {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
