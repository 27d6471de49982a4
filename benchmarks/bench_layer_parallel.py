"""Layer-parallel ResNet vs serial autograd vs torchbraid (issue 12): time of ``y = net(x); y.backward(g)``.

The network torchbraid was timed with: ``x_{k+1} = x_k + h tanh(W_k x_k + b_k)``, 64 layers, width
128, batch 128, float32, T = 1; MGRIT cf 4, FCF, V-cycle, no nested iteration, zero initial guess,
one thread per process; median of 5 passes after a warm-up (:mod:`torchpint.layerpar.bench`).
Rows: one level (the exact pass), 3 levels with 2 iterations forward and backward, 3 levels to
tolerance 1e-5; each on 1 process, 2 processes (2 layer ranks) and 2 processes as 1 layer rank x
2 data groups (and 2 x 2 = 4 processes where there are 4 cores).  Serial autograd is timed in the
same run, first and last; torchbraid's figures are those of issue 12 (built from source and
timed side by side there; not installed here).  Then: MGRIT iterations per batch over 50 SGD steps
on the digits with and without warm starts, and where the time goes.

    flock /tmp/torchpint-bench.lock .venv/bin/python benchmarks/bench_layer_parallel.py --part timing [--repeat 5]
    .venv/bin/python benchmarks/bench_layer_parallel.py --part iterations [--steps 50]

Results: benchmarks/results/layer_parallel.json (+ .md, the table) and layer_parallel_iterations.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from torchpint.layerpar.bench import BenchSpec, time_many, time_worker, warm_start_iterations
from torchpint.run.launch import run_workers

HERE = Path(__file__).resolve().parent

# Issue 12's measurement of torchbraid (one process, one thread): milliseconds, serial autograd in that run.
REFERENCE = {
    "1 level (exact pass)": {"serial_ms": 16.4, "torchbraid_ms": 25.8, "torchbraid_error": 0.0},
    "3 levels, 2 iterations forward and backward": {"serial_ms": 17.8, "torchbraid_ms": 186.0, "torchbraid_error": 0.055},
    "3 levels, to tolerance 1e-05": {"torchbraid_iterations": 7},
}


def timing(repeat: int, out: Path) -> None:
    load_before = os.getloadavg()
    base = BenchSpec(repeat=repeat)
    specs = [replace(base, levels=1), base, replace(base, max_iter=30, tol=1e-5)]
    serial_spec = replace(base, mode="serial")
    print(f"64-layer tanh ResNet, width 128, batch 128, float32, one thread per process; load average "
          f"{load_before[0]:.2f} on {os.cpu_count()} cores", flush=True)

    runs: dict[str, list[list[dict]]] = {}  # configuration -> one list of specs' results per rank
    serial_first = time_worker(serial_spec)
    print("1 process ...", flush=True)
    runs["P=1"] = [time_many(specs)]
    print("2 processes (2 layer ranks) ...", flush=True)
    runs["P=2"] = run_workers(time_many, 2, (specs,), timeout_s=1200)
    data_specs = [replace(s, data_parallel=2) for s in specs]
    print("2 processes (1 layer rank x 2 data groups) ...", flush=True)
    runs["P=1x2"] = run_workers(time_many, 2, (data_specs,), timeout_s=1200)
    if (os.cpu_count() or 1) >= 4:
        print("4 processes (2 layer ranks x 2 data groups) ...", flush=True)
        runs["P=2x2"] = run_workers(time_many, 4, (data_specs,), timeout_s=1200)
    serial_last = time_worker(serial_spec)
    t_serial = statistics.mean([serial_first["total_seconds"], serial_last["total_seconds"]])
    cpu_serial = statistics.mean([serial_first["cpu_seconds"], serial_last["cpu_seconds"]])

    lines = [
        f"Serial autograd in this run: {serial_first['total_seconds'] * 1e3:.1f} ms before, "
        f"{serial_last['total_seconds'] * 1e3:.1f} ms after; CPU {serial_first['cpu_seconds'] * 1e3:.1f} / "
        f"{serial_last['cpu_seconds'] * 1e3:.1f} ms (ratios use the means, {t_serial * 1e3:.1f} ms and "
        f"{cpu_serial * 1e3:.1f} ms).",
        "",
        "| configuration | processes | torchpint ms | x serial | CPU ms, busiest rank | x serial CPU | iterations fwd/bwd "
        "| max abs. output error vs serial | torchbraid (issue 12, 1 process) ms | x serial |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, spec in enumerate(specs):
        ref = REFERENCE.get(spec.label(), {})
        for key, ranks in runs.items():
            r = ranks[0][i]
            cpu = max(rank[i]["cpu_seconds"] for rank in ranks)
            its = "1/1" if spec.levels == 1 else f"{r['forward']['iterations']}/{r['backward']['iterations']}"
            if "torchbraid_ms" in ref:
                theirs = f"{ref['torchbraid_ms']:.1f} | {ref['torchbraid_ms'] / ref['serial_ms']:.1f}"
            elif "torchbraid_iterations" in ref:
                theirs = f"{ref['torchbraid_iterations']} iterations | -"
            else:
                theirs = "- | -"
            lines.append(f"| {spec.label()} | {key} | {r['total_seconds'] * 1e3:.1f} | {r['total_seconds'] / t_serial:.2f} "
                         f"| {cpu * 1e3:.1f} | {cpu / cpu_serial:.2f} | {its} | {r['max_abs_error']:.2g} | {theirs} |")
    table = "\n".join(lines)
    print("\n" + table, flush=True)

    phases = {}
    print("\nwhere the time goes (1 process, last pass, ms):")
    for spec, r in zip(specs, runs["P=1"][0]):
        row: dict[str, object] = {"forward_ms": r["forward_seconds"] * 1e3, "backward_ms": r["backward_seconds"] * 1e3}
        for phase in ("forward", "backward"):
            for name, sec in (r[phase].get("phase_seconds") or {}).items():
                row[f"{phase}.{name}_ms"] = sec * 1e3
            row[f"{phase}.steps_per_level"] = r[phase]["steps_per_level"]
        phases[spec.label()] = row
        print(f"  {spec.label()}: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in row.items()))
    load_after = os.getloadavg()
    record = {
        "network": {"layers": base.layers, "width": base.width, "batch": base.batch, "dtype": base.dtype, "T": base.T,
                    "step": "x + h tanh(W x + b)"},
        "serial": {"before": serial_first, "after": serial_last, "mean_seconds": t_serial, "mean_cpu_seconds": cpu_serial},
        "runs": runs, "reference_torchbraid": REFERENCE, "phases_1proc": phases, "table_markdown": table,
        "load_average": {"before": load_before, "after": load_after}, **_environment(),
    }
    _write(out, record)
    out.with_suffix(".md").write_text(table + "\n")
    print(f"\nload average before/after: {load_before[0]:.2f}/{load_after[0]:.2f}; results: {out}")


def iterations(steps: int, out: Path) -> None:
    """MGRIT iterations per batch with and without warm starts (counts: no timing, no lock needed)."""
    print(f"MGRIT iterations per batch over {steps} SGD steps on digits (tolerance 1e-5) ...", flush=True)
    warm: dict[str, dict[str, object]] = {}
    for same in (False, True):
        for flag in (False, True):
            key = f"{'one batch repeated' if same else 'shuffled batches'}, warm_start={flag}"
            counts = warm_start_iterations(steps, flag, same_batch=same)
            fwd = [c[0] for c in counts]
            bwd = [c[1] for c in counts]
            warm[key] = {"forward": fwd, "backward": bwd, "forward_mean": statistics.mean(fwd),
                         "backward_mean": statistics.mean(bwd)}
            print(f"  {key}: forward mean {statistics.mean(fwd):.2f} (max {max(fwd)}), backward mean "
                  f"{statistics.mean(bwd):.2f} (max {max(bwd)}); per batch fwd {fwd} bwd {bwd}", flush=True)
    _write(out, {"steps": steps, "tolerance": 1e-5, "iterations": warm, **_environment()})
    print(f"results: {out}")


def _environment() -> dict[str, object]:
    return {"cpu_count": os.cpu_count(), "torch": torch.__version__, "python": sys.version.split()[0],
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _write(out: Path, record: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("timing", "iterations", "all"), default="all",
                        help="timing: the table (run it under the benchmark lock); iterations: warm-start counts")
    parser.add_argument("--repeat", type=int, default=5, help="timed passes (median), after one warm-up")
    parser.add_argument("--steps", type=int, default=50, help="SGD steps of the warm-start comparison")
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for layer_parallel{,_iterations}.json")
    args = parser.parse_args()
    if args.repeat < 1 or args.steps < 1:
        sys.exit("bench_layer_parallel.py: --repeat and --steps must be >= 1")
    torch.set_num_threads(1)
    if args.part in ("timing", "all"):
        timing(args.repeat, Path(args.out) / "layer_parallel.json")
    if args.part in ("iterations", "all"):
        iterations(args.steps, Path(args.out) / "layer_parallel_iterations.json")


if __name__ == "__main__":
    main()
