"""Engine speed, measured as ratios in one run: the working tree against a git revision.

Heat1D (PyMGRIT's discretisation, backward Euler, the CLI's right-hand side), FCF V-cycles, no
nested iteration, tol 1e-9, one thread per process; the cases of issue 14 (XBraid's figures are
the reference, docs/engine.md):

    1    nx 2049, nt 1025, 5 levels, cf 4, 1 process
    2    nx 257,  nt 4097, 4 levels, cf 4, 1 process
    1p2  case 1 on 2 processes (the default transport: shared memory between ranks on one machine)
    1p2g case 1 on 2 processes, every message through gloo (what revisions before the transport did)
    1p2s case 1 on 2 processes, rank 0 waiting for every iteration's residual sum (--no-run-ahead)
    1n5, 1n5p2  case 1's grid and cycles with nx 5 on 1 and 2 processes: the steps cost next to
         nothing, so the time per iteration is the engine's floor (Python, messages, waits)
    1w, 1wp2    case 1 with nx 4097 (the demo's size) on 1 and 2 processes: the floor weighs half

    .venv/bin/python benchmarks/bench_engine.py --baseline 2880a57 [--rounds 8] [--cases 1,2,1p2]
    .venv/bin/python benchmarks/bench_engine.py --latency      # one message (gloo, shared memory), 2 processes
    .venv/bin/python benchmarks/bench_engine.py --kernel       # Heat1D's batched step, per state
    .venv/bin/python benchmarks/bench_engine.py --cold         # a torch call after a sweep of N MB
    .venv/bin/python benchmarks/bench_engine.py --scaling      # the kernel on 1 process and on 2 at once

``--baseline REV`` extracts ``git archive REV`` into a temporary folder and runs its ``src``
with this same interpreter, side by side with the working tree's ``src``: every round starts
one fresh process per tree (alternating which goes first), each runs every case once to warm
up (numba's compile cache, first-touch memory) and once timed (``--repeat N``: N times, the
median solve counts); the table gives medians over
the rounds and the ratio baseline / working tree.  It also checks that both trees give the
same residual history and steps per level, and reports the cost of one step (seconds in the
``step`` phase per state stepped), the bookkeeping per iteration (solve time outside the
steps), the messages each rank sends per iteration, and the process CPU time of ``solve()``
(rank 0's), which unlike wall time is not stretched when other work shares the cores.  ``--pymgrit-python`` adds PyMGRIT
1.0.6 on case 1 when its virtual environment exists (benchmarks/pymgrit_reference.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RECORD = "@@RECORD@@"
CASES: dict[str, dict[str, Any]] = {
    "1": {"nx": 2049, "nt": 1025, "levels": 5, "nproc": 1},
    "2": {"nx": 257, "nt": 4097, "levels": 4, "nproc": 1},
    "1p2": {"nx": 2049, "nt": 1025, "levels": 5, "nproc": 2},
    # the same with every message through gloo (revisions before the shared-memory transport had only that)
    "1p2g": {"nx": 2049, "nt": 1025, "levels": 5, "nproc": 2, "transport": "gloo"},
    # the same with rank 0 waiting for every iteration's residual sum (no run-ahead)
    "1p2s": {"nx": 2049, "nt": 1025, "levels": 5, "nproc": 2, "run_ahead": False},
    # case 1's cycles on states of 3 values: the steps cost next to nothing, so what is left is
    # the engine's floor per iteration (Python, messages, waiting for the other rank)
    "1n5": {"nx": 5, "nt": 1025, "levels": 5, "nproc": 1},
    "1n5p2": {"nx": 5, "nt": 1025, "levels": 5, "nproc": 2},
    # case 1 with states twice as large (the demo's engine size): the same floor weighs half as much
    "1w": {"nx": 4097, "nt": 1025, "levels": 5, "nproc": 1},
    "1wp2": {"nx": 4097, "nt": 1025, "levels": 5, "nproc": 2},
}


# ---------------------------------------------------------------------------- in a worker process
class CountingComm:
    """Counts the point-to-point messages and all-reduces of the Comm it wraps."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.rank, self.size = inner.rank, inner.size
        self.messages = 0
        self.reductions = 0

    def send(self, *args: Any, **kwargs: Any) -> Any:
        self.messages += 1
        return self.inner.send(*args, **kwargs)

    def sum(self, *args: Any, **kwargs: Any) -> Any:
        self.reductions += 1
        return self.inner.sum(*args, **kwargs)

    def isum(self, *args: Any, **kwargs: Any) -> Any:
        self.reductions += 1
        return self.inner.isum(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # everything else as the wrapped Comm
        return getattr(self.inner, name)


def timed_solve(case: dict[str, Any]) -> dict[str, Any]:
    """Warm-up solve, then the timed one; uses only APIs that every benchmarked revision has."""
    import dataclasses

    import torch

    from torchpint.cli.solve import SolveConfig, build_solver

    torch.set_num_threads(1)
    known = {f.name for f in dataclasses.fields(SolveConfig)}  # (older revisions lack some options)
    extra = {k: case[k] for k in ("transport", "run_ahead", "replay") if k in case and k in known}
    config = SolveConfig(problem="heat1d", nx=case["nx"], nt=case["nt"], levels=case["levels"], cf=[4],
                         relax="FCF", cycle="V", nested=False, tol=1e-9, max_iter=100, verbose=False, **extra)
    build_solver(config).solve()  # warm-up
    runs = []
    for _ in range(case.get("repeat", 1)):
        solver = build_solver(config)
        solver.comm = counting = CountingComm(solver.comm)
        cpu = time.process_time()
        result = solver.solve()
        cpu = time.process_time() - cpu  # set-up and output included; unlike wall time, not inflated by other load
        runs.append({
            "seconds": result.solve_seconds, "cpu_seconds": cpu, "iterations": result.iterations,
            "residuals": result.residuals, "phase_seconds": result.phase_seconds,
            "steps_per_level": result.steps_per_level, "messages": counting.messages, "reductions": counting.reductions,
        })
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]  # the median solve (of rank 0, on 2 ranks)


def _run_workers(fn: Any, nproc: int, args: tuple) -> list[Any]:
    try:  # the launcher's module is torchpint.run from the revision that renamed it
        from torchpint.run import run_workers
    except ImportError:  # an older revision (before the run layer): torchpint.dist
        from torchpint.dist import run_workers
    return run_workers(fn, nproc, args, timeout_s=600)


def worker(names: list[str], repeat: int = 1) -> None:
    import torchpint

    out: dict[str, Any] = {"torchpint": str(Path(torchpint.__file__).resolve())}
    for name in names:
        case = {**CASES[name], "repeat": repeat}
        if case["nproc"] == 1:
            out[name] = timed_solve(case)
        else:  # rank 0's record, with the steps per level of all ranks (which rank takes a step may differ between trees)
            ranks = _run_workers(timed_solve, case["nproc"], (case,))
            out[name] = {**ranks[0], "all_steps_per_level": [sum(s) for s in zip(*(r["steps_per_level"] for r in ranks))]}
    print(RECORD + json.dumps(out), flush=True)


def ping_pong(rounds: int, numel: int, transport: str = "gloo") -> float:
    """Median one-way time of a message of ``numel`` float64 through the engine's comm of ``transport``."""
    import torch

    from torchpint.engine.shm import make_comm

    comm = make_comm(None, transport)
    state = torch.zeros(numel, dtype=torch.float64)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        if comm.rank == 0:
            comm.send(state, 1)
            comm.recv(state, 1)
        else:
            comm.recv(state, 0)
            comm.send(state, 0)
        comm.wait_sends()
        times.append((time.perf_counter() - start) / 2)
    return statistics.median(times)


def torch_rows_solve(d: Any, e: Any, b: Any) -> Any:
    """The LDL^T sweeps in torch ops, one op per row across the batch (the batch contiguous)."""
    import torch

    x = b.T.contiguous()
    d, e = torch.from_numpy(d), torch.from_numpy(e)
    for i in range(1, x.shape[0]):
        x[i].sub_(x[i - 1] * e[i - 1])
    x[-1].div_(d[-1])
    for i in range(x.shape[0] - 2, -1, -1):
        x[i].div_(d[i]).sub_(x[i + 1] * e[i])
    return x.T.contiguous()


def time_kernels(rounds: int) -> dict[str, float]:
    """Seconds per state of Heat1D's batched step: the row kernel, LAPACK pttrs, torch row ops.

    And the F-relaxation of ``batch`` C-intervals (cf 4: 3 steps each): one ``step_intervals_into``
    call against one batched step per offset (what the engine does for problems without it).
    """
    import torch

    from torchpint.problems import Heat1D, default_rhs

    torch.set_num_threads(1)
    out: dict[str, float] = {}
    for nx, batch in ((2049, 256), (257, 1024)):
        rows, lapack = (Heat1D(0.0, 2.0, nx, rhs=default_rhs(), solver=s) for s in ("rows", "lapack"))
        u = torch.randn(2 * batch, nx - 2, dtype=torch.float64)[::2]  # strided, as the engine passes
        t0 = torch.linspace(0.0, 1.0, batch, dtype=torch.float64)
        t1 = t0 + 2.0 / 1024
        d, e = lapack._factor(2.0 / 1024)
        b = u + lapack._source(t1) * (t1 - t0).unsqueeze(1)
        variants = {"rows": partial(rows.step_batch, u, t0, t1), "lapack": partial(lapack.step_batch, u, t0, t1),
                    "torch_rows": partial(torch_rows_solve, d, e, b)}
        if not torch.equal(variants["rows"](), variants["lapack"]()):
            raise SystemExit("the row kernel and pttrs disagree")
        times: dict[str, list[float]] = {k: [] for k in variants}
        for k in range(rounds):  # interleaved; the slow torch-ops variant only in the first rounds
            for name, fn in variants.items():
                if name == "torch_rows" and k >= 2:
                    continue
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) / batch)
        for name, values in times.items():
            out[f"nx{nx}_{name}_us"] = 1e6 * statistics.median(values)
        print(f"nx {nx}, batch {batch}: us per state: " + ", ".join(
            f"{name} {out[f'nx{nx}_{name}_us']:.2f}" for name in variants) + " (rows and lapack: bitwise equal)")
        # F-relaxation of `batch` intervals of 4 points, in place
        m, npts = 4, 4 * batch
        start = torch.randn(npts, nx - 2, dtype=torch.float64)
        t = torch.arange(npts, dtype=torch.float64) / 1024  # one step size

        def by_offset(u: Any) -> None:
            for j in range(1, m):
                rows.step_batch_into(u[j - 1 :: m], t[j - 1 :: m], t[j::m], u[j::m])

        fused, per_offset = start.clone(), start.clone()
        rows.step_intervals_into(fused, t, m)
        by_offset(per_offset)
        if not torch.equal(fused, per_offset):
            raise SystemExit("the fused F-relaxation and the per-offset steps disagree")
        f_times: dict[str, list[float]] = {"intervals": [], "by_offset": []}
        for _ in range(rounds):
            for name, fn in (("intervals", lambda: rows.step_intervals_into(fused, t, m)), ("by_offset", lambda: by_offset(per_offset))):
                begin = time.perf_counter()
                fn()
                f_times[name].append((time.perf_counter() - begin) / (npts - batch))
        for name, values in f_times.items():
            out[f"nx{nx}_f_relax_{name}_us"] = 1e6 * statistics.median(values)
        print(f"nx {nx}, F-relaxation of {batch} intervals (cf 4): us per state: one call "
              f"{out[f'nx{nx}_f_relax_intervals_us']:.2f}, a batched step per offset {out[f'nx{nx}_f_relax_by_offset_us']:.2f} (bitwise equal)")
    return out


# ---------------------------------------------------------------------------- the driver
def run_tree(src: Path, names: list[str], repeat: int = 1) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", ",".join(names),
                           "--repeat", str(repeat)],
                          capture_output=True, text=True, env=env, timeout=3600)
    for line in proc.stdout.splitlines():
        if line.startswith(RECORD):
            record = json.loads(line[len(RECORD):])
            if not record["torchpint"].startswith(str(src.resolve())):
                raise SystemExit(f"the worker imported {record['torchpint']}, not the tree under {src}")
            return record
    raise SystemExit(f"benchmark worker for {src} failed:\n{proc.stderr[-3000:]}")


def export(rev: str, into: Path) -> Path:
    """``git archive rev`` extracted into ``into``; returns its ``src``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"git archive {rev} failed: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def per_run(run: dict[str, Any]) -> dict[str, float]:
    steps = sum(run["steps_per_level"])
    step_seconds = run["phase_seconds"].get("step", 0.0)
    return {
        "seconds": run["seconds"],
        "cpu_seconds": run["cpu_seconds"],
        "step_us": 1e6 * step_seconds / steps,
        "bookkeeping_ms_per_iter": 1e3 * (run["seconds"] - step_seconds) / run["iterations"],
        "messages_per_iter": run["messages"] / run["iterations"],
    }


def compare(rounds_by_tree: dict[str, list[dict[str, Any]]], names: list[str]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    trees = list(rounds_by_tree)
    for name in names:
        row: dict[str, Any] = {}
        for tree in trees:
            runs = [r[name] for r in rounds_by_tree[tree]]
            metrics = [per_run(r) for r in runs]
            row[tree] = {k: statistics.median(m[k] for m in metrics) for k in metrics[0]}
            row[tree]["iterations"] = runs[0]["iterations"]
            row[tree]["steps_per_level"] = runs[0].get("all_steps_per_level", runs[0]["steps_per_level"])
            row[tree]["residuals"] = runs[0]["residuals"]
        if len(trees) == 2:
            base, work = (row[t] for t in trees)
            row["ratio"] = base["seconds"] / work["seconds"]
            row["cpu_ratio"] = base["cpu_seconds"] / work["cpu_seconds"]
            row["same_steps"] = base["steps_per_level"] == work["steps_per_level"]
            row["history_max_rel_diff"] = (
                max(abs(a - b) / b for a, b in zip(base["residuals"], work["residuals"]))
                if len(base["residuals"]) == len(work["residuals"]) else float("inf"))
        table[name] = row
    return table


def round_ratios(rounds: dict[str, list[dict[str, Any]]], one: str, two: str) -> dict[str, list[float]]:
    """Per tree, each round's solve time of case ``one`` over ``two``.

    A round runs a tree's cases in one process, one after the other, so the two times of a
    round are seconds apart: their ratio is less exposed to this VM's slow and fast phases
    than the ratio of medians taken over the whole run.
    """
    return {tree: [r[one]["seconds"] / r[two]["seconds"] for r in runs] for tree, runs in rounds.items()}


def print_table(table: dict[str, Any], trees: list[str], per_round: dict[str, dict[str, list[float]]] | None = None) -> None:
    head = (f"{'case':5s} {'tree':24s} {'solve s':>8s} {'cpu s':>7s} {'iters':>5s} {'step us':>8s}"
            f" {'bookkeeping ms/iter':>20s} {'msgs/iter':>9s}")
    print(head)
    for name, row in table.items():
        for tree in trees:
            r = row[tree]
            print(f"{name:5s} {tree:24s} {r['seconds']:8.3f} {r['cpu_seconds']:7.3f} {r['iterations']:5d} {r['step_us']:8.2f}"
                  f" {r['bookkeeping_ms_per_iter']:20.2f} {r['messages_per_iter']:9.1f}")
        if "ratio" in row:
            print(f"{name:5s} {'ratio (baseline/work)':24s} {row['ratio']:8.2f}x {row['cpu_ratio']:6.2f}x"
                  f"   same steps per level: {row['same_steps']},"
                  f" history max rel. diff {row['history_max_rel_diff']:.1e}")
    for one, two in SCALING_PAIRS:
        if one in table and two in table:
            print(f"case {one}, 2 processes over 1: solve time (the steps' own speed-up, 2 x step us on 1 / on 2,"
                  " i.e. what the two cores deliver together in this run)")
            for tree in trees:
                ratios = (per_round or {}).get(one, {}).get(tree)
                within = (f"; per round {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}x)"
                          if ratios else "")
                print(f"      {tree:24s} {time_scaling(table, tree, one, two):8.2f}x"
                      f"  ({step_scaling(table, tree, one, two):.2f}x){within}")
    if "1n5" in table and "1n5p2" in table:
        print("the engine's floor, ms per iteration with nx 5 (states of 3 values), on 1 and on 2 processes:")
        for tree in trees:
            one, two = (table[n][tree]["seconds"] / table[n][tree]["iterations"] * 1e3 for n in ("1n5", "1n5p2"))
            print(f"      {tree:24s} {one:8.3f} {two:8.3f}")


SCALING_PAIRS = (("1", "1p2"), ("1w", "1wp2"))  # the same case on 1 and on 2 processes


def time_scaling(table: dict[str, Any], tree: str, one: str = "1", two: str = "1p2") -> float:
    """A case's solve time on 1 process over that on 2 (case 1 by default)."""
    return table[one][tree]["seconds"] / table[two][tree]["seconds"]


def step_scaling(table: dict[str, Any], tree: str, one: str = "1", two: str = "1p2") -> float:
    """How much faster 2 processes step than 1 in this run, from the step cost per state alone.

    The steps divide exactly (each rank steps half the states), so this is the two cores'
    combined throughput for the kernel over one core's: the ceiling of the solve's speed-up
    on this machine at this time, whatever the engine does around the steps.
    """
    return 2 * table[one][tree]["step_us"] / table[two][tree]["step_us"]


def time_pymgrit(python: str) -> dict | None:
    """PyMGRIT's own solve time for case 1 ('k' of pymgrit_reference.py), or None without its venv."""
    if not Path(python).exists():
        print(f"PyMGRIT interpreter {python} not found: skipping it (see benchmarks/pymgrit_reference.py)")
        return None
    mpiexec = shutil.which("mpiexec", path=str(Path(python).parent)) or "mpiexec"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [mpiexec, "-n", "1", python, str(HERE / "pymgrit_reference.py"), "--worker", "k"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith(RECORD):
            return json.loads(line[len(RECORD):])
    print("PyMGRIT failed:", proc.stderr[-2000:])
    return None


def cold_call(megabytes: list[int], rounds: int, barrier: bool = False) -> dict[str, float]:
    """Median microseconds of one torch call (a view of a state) right after sweeping ``megabytes`` MB.

    What the engine's Python meets after each kernel: a sweep larger than the cache it shares
    evicts the interpreter's and torch's code and data, and the next few calls reload them from
    memory.  ``barrier``: in a 2-process run, both ranks sweep at once (each its own buffer, the
    same loop started together), as the engine's ranks do.
    """
    import numpy as np
    import torch

    torch.set_num_threads(1)
    state = torch.zeros(1025, 2047, dtype=torch.float64)
    out = {}
    for mb in megabytes:
        buffer = np.zeros((mb << 17) or 1)  # mb MB of float64 (0: nothing swept)
        times = []
        if barrier:  # once per size: the ranks then run the same loop side by side
            import torch.distributed as dist

            dist.barrier()
        for _ in range(rounds):
            buffer.fill(1.0)
            start = time.perf_counter()
            state[1024]
            times.append(time.perf_counter() - start)
        out[str(mb)] = 1e6 * statistics.median(times)
    return out


def kernel_scaling(states: list[int], seconds: float, together: bool = False) -> dict[str, float]:
    """Microseconds per state of Heat1D's F-relaxation (nx 2049, cf 4) on a working set of ``states`` states.

    ``together``: in a 2-process run, both ranks run the same loop at once, each on its own
    arrays, for ``seconds`` per size.  Two processes that each take as long per state as one
    alone deliver 2x; a kernel limited by the memory bus the cores share delivers less once the
    arrays outgrow the caches.
    """
    import torch

    from torchpint.problems import Heat1D, default_rhs

    torch.set_num_threads(1)
    heat = Heat1D(0.0, 2.0, 2049, rhs=default_rhs(), solver="rows")
    out = {}
    for count in states:
        u = torch.randn(count, 2047, dtype=torch.float64)
        t = torch.arange(count, dtype=torch.float64) / 1024
        heat.step_intervals_into(u, t, 4)  # warm-up (and the factorisation)
        if together:
            import torch.distributed as dist

            dist.barrier()
        times: list[float] = []
        until = time.perf_counter() + seconds  # a fixed time, not a count: two ranks overlap throughout
        while (start := time.perf_counter()) < until:
            heat.step_intervals_into(u, t, 4)
            times.append((time.perf_counter() - start) / (count - count // 4))
        out[str(count)] = 1e6 * statistics.median(times)
    return out


def call_after_sweep(states: list[int], rounds: int) -> dict[str, float]:
    """Extra microseconds of one F-relaxation call right after sweeping 16 MB, against the same call repeated.

    What a kernel call pays to bring its code, factors and first states back into cache when
    other work ran before it, as in a solve: a cost per call, whatever the number of states.
    """
    import numpy as np
    import torch

    from torchpint.problems import Heat1D, default_rhs

    torch.set_num_threads(1)
    heat = Heat1D(0.0, 2.0, 2049, rhs=default_rhs(), solver="rows")
    sweep = np.zeros(2 << 20)  # 16 MB
    out = {}
    for count in states:
        u = torch.randn(count, 2047, dtype=torch.float64)
        t = torch.arange(count, dtype=torch.float64) / 1024
        heat.step_intervals_into(u, t, 4)
        warm, cold = [], []
        for _ in range(rounds):
            start = time.perf_counter()
            heat.step_intervals_into(u, t, 4)
            warm.append(time.perf_counter() - start)
            sweep.fill(1.0)
            start = time.perf_counter()
            heat.step_intervals_into(u, t, 4)
            cold.append(time.perf_counter() - start)
        out[str(count)] = 1e6 * (statistics.median(cold) - statistics.median(warm))
    return out


def save_beside(record: dict[str, Any], out: str, suffix: str) -> None:
    """A measurement of its own (``--kernel``, ``--cold``, ``--scaling``) beside ``--out``: ``<stem>_<suffix>.json``."""
    record["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average before {' '.join(record['loadavg_before'])}, after {' '.join(record['loadavg_after'])}")
    path = Path(out).with_name(Path(out).stem + f"_{suffix}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    print(f"results: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", metavar="REV", help="git revision to run side by side with the working tree")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians are reported)")
    parser.add_argument("--cases", default="1,2,1p2", help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--latency", action="store_true", help="measure one message between 2 processes (gloo and shared memory)")
    parser.add_argument("--kernel", action="store_true", help="time Heat1D's batched step alone, per state")
    parser.add_argument("--scaling", action="store_true",
                        help="the F-relaxation kernel on 1 process and on 2 at once: what the two cores deliver together")
    parser.add_argument("--cold", action="store_true", help="time a torch call after sweeping N MB (1 and 2 processes)")
    parser.add_argument("--pymgrit-python", default="/work/pymgrit-venv/bin/python")
    parser.add_argument("--out", default=str(HERE / "results" / "engine.json"))
    parser.add_argument("--repeat", type=int, default=1,
                        help="solves timed per process and round, after the warm-up (their median counts)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker.split(","), args.repeat)
        return
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    names = args.cases.split(",")
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}: use {', '.join(CASES)}")
    record: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}
    if args.latency:
        sys.path.insert(0, str(ROOT / "src"))
        for transport in ("gloo", "shm"):
            for numel in (1, 2047):
                seconds = _run_workers(ping_pong, 2, (2000, numel, transport))[0]
                record[f"latency_us_{numel}" + ("" if transport == "gloo" else f"_{transport}")] = 1e6 * seconds
                print(f"one message of {numel} float64 over {transport} (send/recv ping-pong, median of 2000): "
                      f"{1e6 * seconds:.1f} us")
    if args.scaling:
        sys.path.insert(0, str(ROOT / "src"))
        sizes = [32, 128, 256, 512, 1024]
        seconds = 0.2 * args.rounds
        one = kernel_scaling(sizes, seconds)
        two = _run_workers(kernel_scaling, 2, (sizes, seconds, True))[0]
        after = call_after_sweep(sizes, 8 * args.rounds)
        record["kernel_scaling_us"] = {"1 process": one, "2 processes at once": two,
                                       "extra per call after a 16 MB sweep": after}
        print(f"Heat1D's F-relaxation (nx 2049, cf 4), us per state, median of the calls in {seconds:.1f} s")
        print(f"{'states per process':>18s} {'MB':>6s} {'1 process':>10s} {'2 at once':>10s} {'2 deliver':>10s}"
              f" {'a call after a 16 MB sweep: us more':>36s}")
        for n in sizes:
            print(f"{n:18d} {n * 2047 * 8 / 2**20:6.1f} {one[str(n)]:10.2f} {two[str(n)]:10.2f}"
                  f" {2 * one[str(n)] / two[str(n)]:9.2f}x {after[str(n)]:36.1f}")
        save_beside(record, args.out, "scaling")
        return
    if args.cold:
        sys.path.insert(0, str(ROOT / "src"))
        sizes = [0, 2, 4, 8, 12, 16, 24, 32]
        one = cold_call(sizes, 300)
        two = _run_workers(cold_call, 2, ([mb // 2 for mb in sizes], 300, True))[0]
        record["cold_call_us"] = {"1 process": one, "2 processes, half each": two}
        print("one torch call (a view) right after sweeping N MB, median of 300, microseconds")
        print(f"{'N MB swept in all':>18s} {'1 process':>10s} {'2 processes, N/2 each':>22s}")
        for mb in sizes:
            print(f"{mb:18d} {one[str(mb)]:10.1f} {two[str(mb // 2)]:22.1f}")
        save_beside(record, args.out, "cold")
        return
    if args.kernel:
        sys.path.insert(0, str(ROOT / "src"))
        record["kernel"] = time_kernels(max(args.rounds, 3) * 4)
        save_beside(record, args.out, "kernel")
        return
    with tempfile.TemporaryDirectory(prefix="torchpint-baseline-") as tmp:
        trees = {"working tree": ROOT / "src"}
        if args.baseline:
            sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline],
                                 capture_output=True, text=True)
            if sha.returncode != 0:
                raise SystemExit(f"unknown git revision {args.baseline!r}")
            trees = {f"baseline {sha.stdout.strip()}": export(args.baseline, Path(tmp)), **trees}
        rounds: dict[str, list[dict[str, Any]]] = {t: [] for t in trees}
        order = list(trees)
        for k in range(args.rounds):
            for tree in order if k % 2 == 0 else reversed(order):
                rounds[tree].append(run_tree(trees[tree], names, args.repeat))
            print(f"round {k + 1}/{args.rounds} done", flush=True)
    table = compare(rounds, names)
    print(f"\nHeat1D, FCF V-cycles, cf 4, no nested, tol 1e-9; medians of {args.rounds} interleaved rounds"
          + (f", each the median of {args.repeat} solves" if args.repeat > 1 else ""))
    per_round = {one: round_ratios(rounds, one, two) for one, two in SCALING_PAIRS if one in names and two in names}
    print_table(table, list(trees), per_round)
    if "1" in names and "1p2" in names:
        record["two_over_one"] = {t: {"solve": time_scaling(table, t), "steps": step_scaling(table, t),
                                      "per_round": per_round["1"][t]} for t in trees}
    if "1w" in names and "1wp2" in names:
        record["two_over_one_1w"] = {t: {"solve": time_scaling(table, t, "1w", "1wp2"),
                                         "steps": step_scaling(table, t, "1w", "1wp2"),
                                         "per_round": per_round["1w"][t]} for t in trees}
    if "1n5" in names and "1n5p2" in names:
        record["floor_ms_per_iter"] = {t: {n: 1e3 * table[n][t]["seconds"] / table[n][t]["iterations"]
                                           for n in ("1n5", "1n5p2")} for t in trees}
    record["rounds"], record["repeat"] = args.rounds, args.repeat
    record["cases"] = {n: CASES[n] for n in names}
    record["table"] = table
    record["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average before {' '.join(record['loadavg_before'])}, after {' '.join(record['loadavg_after'])}")
    if "1" in names:
        peer = time_pymgrit(args.pymgrit_python)
        if peer:
            work = table["1"]["working tree"]["seconds"]
            print(f"PyMGRIT 1.0.6, case 1: {peer['seconds']:.3f} s, {peer['seconds'] / work:.1f}x the working tree's time")
            record["pymgrit"] = peer
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
