"""Layer-parallel ResNet: forward+backward time per batch, serial vs layer-parallel on 1 and 2 processes.

A 64-layer residual MLP (``x + h tanh(W x + b)``, width 128, batch 128, float64, T = 4) trained
with cross-entropy.  Timed: the plain ``nn.Sequential`` (autograd), and ``LayerParallel`` with
one level (the exact pass, pipelined over the ranks), with MGRIT converged to 1e-9 (3 levels,
cf 4, FCF, V-cycle) and with the few fixed iterations torchbraid trains with (forward 2,
backward 1), each on 1 and on 2 processes (gloo, one thread each).  Next to every measurement:
the MGRIT iterations, the work (layer steps of both solves over the serial pass's), the largest
CPU time of a rank (its share of the work, whatever else loads the machine), and the
ideal-speedup model of :mod:`torchpint.layerpar.bench` (measured per-step cost on one process,
coarsest level serial, the rest split evenly; no communication), also projected to more processes.

    .venv/bin/python benchmarks/bench_layer_parallel.py [--layers 64 --width 128 --batch 128 --repeat 3]

Where CUDA is available it also times serial vs layer-parallel with batched (vmapped)
F-relaxation on the one GPU; otherwise it says so.  Results: benchmarks/results/layer_parallel.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from torchpint.run.launch import run_workers
from torchpint.layerpar.bench import (
    BenchSpec,
    ideal_time,
    mgrit_work,
    time_many,
    time_worker,
)

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--cf", type=int, default=4)
    parser.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    parser.add_argument("--repeat", type=int, default=3, help="timed passes (median), after one warm-up")
    parser.add_argument("--out", default=str(HERE / "results" / "layer_parallel.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()

    base = BenchSpec(layers=args.layers, width=args.width, batch=args.batch, levels=args.levels, cf=args.cf,
                     dtype=args.dtype, repeat=args.repeat)
    serial_spec = replace(base, mode="serial")
    specs = [
        replace(base, levels=1),
        replace(base, fwd_max_iter=20, bwd_max_iter=20, tol=1e-9),
        replace(base, fwd_max_iter=2, bwd_max_iter=1, tol=0.0),
    ]
    print(f"{args.layers}-layer residual MLP, width {args.width}, batch {args.batch}, {args.dtype}, one thread per "
          f"process; load average {load_before[0]:.2f} on {os.cpu_count()} cores", flush=True)
    print("serial nn.Sequential ...", flush=True)
    serial = time_worker(serial_spec)
    print("layer-parallel, 1 process ...", flush=True)
    one = time_many(specs)
    print("layer-parallel, 2 processes (gloo) ...", flush=True)
    ranks = run_workers(time_many, 2, (specs,), timeout_s=1200)
    two = ranks[0]
    two_cpu = [max(rank[i]["cpu_seconds"] for rank in ranks) for i in range(len(specs))]

    t_serial = serial["total_seconds"]
    print(f"\nserial nn.Sequential forward+backward: {t_serial * 1e3:.1f} ms per batch "
          f"(forward {serial['forward_seconds'] * 1e3:.1f}, backward {serial['backward_seconds'] * 1e3:.1f})\n")
    header = (f"{'configuration':52s} {'P':>2s} {'it fwd/bwd':>10s} {'work':>6s} {'measured ms':>12s} "
              f"{'speedup':>8s} {'max CPU ms/rank':>16s} {'model ms':>9s} {'model speedup':>14s}")
    print(header)
    print("-" * len(header))
    rows = []
    for spec, r1, r2, cpu2 in zip(specs, one, two, two_cpu):
        work = mgrit_work(r1, spec.layers)
        for nproc, r, cpu in ((1, r1, r1["cpu_seconds"]), (2, r2, cpu2)):
            model = ideal_time(r1, nproc)
            row = {"configuration": spec.label(), "nproc": nproc, "forward_iterations": r["forward_iterations"],
                   "backward_iterations": r["backward_iterations"], "converged": r["forward_converged"] and r["backward_converged"],
                   "work_over_serial": work, "measured_seconds": r["total_seconds"],
                   "measured_speedup": t_serial / r["total_seconds"], "max_cpu_seconds_per_rank": cpu,
                   "model_seconds": model,
                   "model_speedup": t_serial / model, "forward_steps_per_level_1proc": r1["forward_steps_per_level"],
                   "backward_steps_per_level_1proc": r1["backward_steps_per_level"], "detail": r}
            rows.append(row)
            print(f"{spec.label():52s} {nproc:2d} {r['forward_iterations']:>4d}/{r['backward_iterations']:<5d} "
                  f"{work:6.2f} {r['total_seconds'] * 1e3:12.1f} {row['measured_speedup']:8.3f} {cpu * 1e3:16.1f} "
                  f"{model * 1e3:9.1f} "
                  f"{row['model_speedup']:14.3f}")
    projections = {}
    print("\nideal-speedup model projected to more processes (vs the serial network; P <= layers):")
    for spec, r1 in zip(specs, one):
        ps = [p for p in (2, 4, 8, 16, 32, 64, 128) if p <= spec.layers]
        projections[spec.label()] = {p: t_serial / ideal_time(r1, p) for p in ps}
        print(f"  {spec.label():52s} " + "  ".join(f"P={p}: {s:.2f}" for p, s in projections[spec.label()].items()))

    gpu = None
    if torch.cuda.is_available():
        print("\nCUDA: one GPU, batched (vmapped) F-relaxation, one process ...", flush=True)
        gspec = replace(base, device="cuda", step_mode="vmap", batch=max(args.batch, 1024))
        g_serial = time_worker(replace(gspec, mode="serial"))
        g_runs = [time_worker(replace(gspec, levels=s.levels, fwd_max_iter=s.fwd_max_iter, bwd_max_iter=s.bwd_max_iter,
                                      tol=s.tol)) for s in specs]
        gpu = {"device": torch.cuda.get_device_name(0), "serial": g_serial, "layer_parallel": g_runs}
        print(f"  serial: {g_serial['total_seconds'] * 1e3:.1f} ms per batch (batch {gspec.batch})")
        for s, g in zip(specs, g_runs):
            print(f"  {s.label():52s} {g['total_seconds'] * 1e3:9.1f} ms, iterations {g['forward_iterations']}/"
                  f"{g['backward_iterations']}")
    else:
        print("\nno GPU: CUDA is not available in this session, so the single-GPU run with batched (vmapped) "
              "F-relaxation was skipped")

    load_after = os.getloadavg()
    record = {
        "network": {"layers": args.layers, "width": args.width, "batch": args.batch, "dtype": args.dtype,
                    "T": base.T, "step": "x + h tanh(W x + b)"},
        "serial": serial, "rows": rows, "model_projection": projections, "gpu": gpu,
        "load_average": {"before": load_before, "after": load_after}, "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "python": sys.version.split()[0], "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=str))
    print(f"\nload average before/after: {load_before[0]:.2f}/{load_after[0]:.2f}; results: {out}")


if __name__ == "__main__":
    main()
