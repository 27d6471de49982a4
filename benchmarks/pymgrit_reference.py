"""Generate reference residual histories from the peer library PyMGRIT.

This script is NOT part of torchpint and does not import it. It must be run
with the interpreter of a separate virtual environment that has PyMGRIT
installed, e.g.::

    python3 -m venv /work/pymgrit-venv
    /work/pymgrit-venv/bin/pip install "numpy<2.3" mpich mpi4py pymgrit==1.0.6
    /work/pymgrit-venv/bin/python benchmarks/pymgrit_reference.py

It writes ``tests/data/pymgrit_reference.json`` (list of records with keys
name, problem, options, residuals, conv, iterations, seconds, ...).

Conventions of the records
--------------------------
* ``residuals[k]`` is PyMGRIT's space-time residual norm after iteration k+1
  (read directly from ``Mgrit.conv``, full float precision).
* ``conv[k]`` is PyMGRIT's reported convergence factor
  ``residuals[k+1] / residuals[k]`` (so it has one entry less).
* ``seconds`` is PyMGRIT's solve time (``time_solve``); ``time_setup``
  (which contains nested iteration) is stored separately.
* Heat1D: ``nx`` is PyMGRIT's ``nx`` = number of spatial grid points including
  both Dirichlet boundary points (unknowns = nx - 2).  ``nt`` counts time
  points including t_start.
* ``relax``: "F" means cf_iter=0, "FCF" means cf_iter=1, "F(CF)^2" cf_iter=2.

Configurations that need several MPI processes (and the single-process
benchmark "k") are run in subprocesses through ``mpiexec`` with
``--worker NAME``.
"""
import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_PATH = os.path.join(HERE, os.pardir, "tests", "data", "pymgrit_reference.json")

RELAX_TO_CF_ITER = {"F": 0, "FCF": 1, "F(CF)^2": 2}


def heat_rhs(x, t):
    return -np.sin(np.pi * x) * (np.sin(t) - np.pi ** 2 * np.cos(t))


def heat_init(x):
    return x * 0


HEAT_BASE = dict(x_start=0.0, x_end=2.0, a=1.0, t_start=0.0, t_stop=2.0,
                 init_cond="0", rhs="-sin(pi x)*(sin t - pi^2 cos t)")


def heat(name, nx, nt, levels, coarsening, relax, cycle, nested, tol=1e-10, max_iter=10,
         weight_c=1.0, custom_coarsening=None, **extra):
    opts = dict(HEAT_BASE, nx=nx, nt=nt, levels=levels, coarsening=coarsening, relax=relax,
                cf_iter=RELAX_TO_CF_ITER[relax], cycle_type=cycle, nested_iteration=nested,
                tol=tol, max_iter=max_iter, weight_c=weight_c, t_norm=2,
                level_setup="custom" if custom_coarsening else "simple_setup_problem")
    if custom_coarsening:
        opts["coarsening_per_level"] = custom_coarsening
    opts.update(extra)
    return dict(name=name, problem="heat1d", options=opts)


def dahlquist(name, nt, levels, coarsening, tol=1e-7, max_iter=100, relax="FCF", cycle="V",
              nested=True, method="BE", lam=-1.0, **extra):
    opts = dict(t_start=0.0, t_stop=5.0, nt=nt, constant_lambda=lam, method=method, u0=1.0,
                levels=levels, coarsening=coarsening, relax=relax, cf_iter=RELAX_TO_CF_ITER[relax],
                cycle_type=cycle, nested_iteration=nested, tol=tol, max_iter=max_iter,
                weight_c=1.0, t_norm=2, level_setup="simple_setup_problem")
    opts.update(extra)
    return dict(name=name, problem="dahlquist", options=opts)


CONFIGS = [
    heat("a", 33, 65, 2, 2, "F", "V", False),
    heat("b", 33, 65, 2, 4, "FCF", "V", False),
    heat("c", 65, 129, 3, 2, "FCF", "V", True),
    heat("d", 65, 129, 3, 2, "F", "F", False),
    heat("e", 65, 129, 4, 2, "FCF", "F", True),
    heat("f", 33, 65, 3, None, "FCF", "V", False, custom_coarsening=[4, 2]),
    heat("g", 33, 65, 3, 2, "F(CF)^2", "V", False),
    heat("h", 33, 65, 2, 4, "FCF", "V", False, weight_c=1.3),
    # i: PyMGRIT defaults (tol=1e-7, max_iter=100, FCF, V, nested iteration)
    dahlquist("i", 101, 2, 2),
    # i_tol1e-10: same with tol=1e-10 (gives the 5-iteration history)
    dahlquist("i_tol1e-10", 101, 2, 2, tol=1e-10),
    dahlquist("j", 257, 4, 2, tol=1e-10, relax="FCF", cycle="F", nested=True),
    heat("k", 2049, 1025, 5, 4, "FCF", "V", False, tol=1e-9, max_iter=100),
    # partial last C-interval: 66 intervals, cf 4 -> 17 coarse points, the last 2 fine points are F-points
    heat("l_partial", 33, 67, 3, 4, "FCF", "V", False),
    heat("m_partial", 33, 70, 3, 2, "FCF", "F", True),
]
BY_NAME = {c["name"]: c for c in CONFIGS}

# names run through mpiexec: name -> (config name, number of processes)
MPI_RUNS = {
    "k": ("k", 1),
    "a_np2": ("a", 2),
    "a_np3": ("a", 3),
}


def build_levels(cfg):
    from pymgrit.core.simple_setup_problem import simple_setup_problem
    o = cfg["options"]
    if cfg["problem"] == "heat1d":
        from pymgrit.heat.heat_1d import Heat1D

        def make(**tkw):
            return Heat1D(x_start=o["x_start"], x_end=o["x_end"], nx=o["nx"], a=o["a"],
                          init_cond=heat_init, rhs=heat_rhs, **tkw)
    else:
        from pymgrit.dahlquist.dahlquist import Dahlquist

        def make(**tkw):
            return Dahlquist(constant_lambda=o["constant_lambda"], method=o["method"], **tkw)

    if o.get("coarsening_per_level"):
        t = [np.linspace(o["t_start"], o["t_stop"], o["nt"])]
        for m in o["coarsening_per_level"]:
            t.append(t[-1][::m])
        assert len(t) == o["levels"]
        return [make(t_interval=ti) for ti in t]
    fine = make(t_start=o["t_start"], t_stop=o["t_stop"], nt=o["nt"])
    return simple_setup_problem(problem=fine, level=o["levels"], coarsening=o["coarsening"])


def run_config(cfg):
    """Run one configuration in this process (may be inside mpiexec)."""
    from mpi4py import MPI
    from pymgrit.core.mgrit import Mgrit
    o = cfg["options"]
    levels = build_levels(cfg)
    comm = MPI.COMM_WORLD
    comm.barrier()
    t0 = time.perf_counter()
    mgrit = Mgrit(problem=levels, weight_c=o["weight_c"], max_iter=o["max_iter"], tol=o["tol"],
                  nested_iteration=o["nested_iteration"], cf_iter=o["cf_iter"],
                  cycle_type=o["cycle_type"], t_norm=o["t_norm"], logging_lvl=logging.WARNING)
    info = mgrit.solve()
    wall = time.perf_counter() - t0
    n_it = int(mgrit.solve_iter)
    res = [float(r) for r in mgrit.conv[1:n_it + 1]]
    rec = dict(cfg)
    rec.update(
        residuals=res,
        conv=[res[k + 1] / res[k] for k in range(len(res) - 1)],
        iterations=n_it,
        converged=bool(res[-1] < o["tol"]),
        seconds=float(info["time_solve"]),
        time_setup=float(info["time_setup"]),
        wall_seconds_setup_plus_solve=wall,
        mpi_processes=comm.Get_size(),
        coarsening_factors=[int(m) for m in mgrit.m[:-1]],
        level_nt=[int(len(p.t)) for p in levels],
    )
    return rec


def worker(name):
    from mpi4py import MPI
    cfg_name, _ = MPI_RUNS.get(name, (name, None))
    cfg = json.loads(json.dumps(BY_NAME[cfg_name]))
    cfg["name"] = name
    rec = run_config(cfg)
    if MPI.COMM_WORLD.Get_rank() == 0:
        print("@@RECORD@@" + json.dumps(rec))


def run_mpi(name, nproc):
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or "mpiexec"
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
        env[var] = "1"
    cmd = [mpiexec, "-n", str(nproc), sys.executable, os.path.abspath(__file__), "--worker", name]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    cfg_name = MPI_RUNS[name][0]
    for line in p.stdout.splitlines():
        if line.startswith("@@RECORD@@"):
            rec = json.loads(line[len("@@RECORD@@"):])
            rec["command"] = " ".join(cmd[:3]) + " python pymgrit_reference.py --worker " + name
            rec["threads"] = 1
            rec["wall_seconds_mpiexec"] = wall
            return rec
    # failure: record the error
    rec = json.loads(json.dumps(BY_NAME[cfg_name]))
    rec.update(name=name, residuals=None, conv=None, iterations=None, seconds=None,
               mpi_processes=nproc, returncode=p.returncode,
               error=(p.stderr.strip().splitlines() or ["<no stderr>"])[-15:],
               stdout_tail=p.stdout.strip().splitlines()[-5:])
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", help="run a single named configuration (used under mpiexec)")
    ap.add_argument("--out", default=OUT_PATH)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker)
        return

    from importlib.metadata import version

    import pymgrit  # noqa: F401
    records = []
    for cfg in CONFIGS:
        if cfg["name"] in MPI_RUNS:
            continue
        try:
            rec = run_config(cfg)
        except Exception:  # pragma: no cover - recorded for inspection
            rec = dict(cfg, residuals=None, conv=None, iterations=None, seconds=None,
                       error=traceback.format_exc().splitlines()[-5:])
        records.append(rec)
    for name, (_, nproc) in MPI_RUNS.items():
        records.append(run_mpi(name, nproc))
    for rec in records:
        rec["pymgrit_version"] = version("pymgrit")
        rec["numpy_version"] = version("numpy")
        rec["scipy_version"] = version("scipy")

    out = os.path.normpath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(records, fh, indent=1)
        fh.write("\n")

    print(f"wrote {out}")
    print(f"{'name':<12}{'np':>3}{'iters':>6}{'first res':>12}{'last res':>12}{'last conv':>11}{'solve s':>9}")
    for r in records:
        if r.get("residuals"):
            res = r["residuals"]
            cf = f"{r['conv'][-1]:.3e}" if r["conv"] else "-"
            print(f"{r['name']:<12}{r['mpi_processes']:>3}{r['iterations']:>6}{res[0]:>12.4e}"
                  f"{res[-1]:>12.4e}{cf:>11}{r['seconds']:>9.3f}")
        else:
            print(f"{r['name']:<12}{r.get('mpi_processes', 1):>3}  ERROR: {r.get('error', [''])[-1]}")


if __name__ == "__main__":
    main()
