"""``torchpint demo``: the main job on embedded defaults, with a Markdown report.

Part 1 (engine): the heat equation solved with MGRIT, time-parallel over 2 processes,
checked against the serial solve (identical residual history) and sequential stepping.
Later parts add the neural-network capabilities.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torchpint.cli.plots import plot_residuals
from torchpint.cli.solve import SolveConfig, solve_worker
from torchpint.run.launch import run_workers

SECTIONS = [
    ("paranet", "torchpint.cli.paranet"),
    ("mgrit-train", "torchpint.cli.mgrit_train"),
    ("layer-parallel", "torchpint.cli.layer_parallel"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="reports/demo", help="folder for the report")
    parser.add_argument("--nproc", type=int, default=2, help="processes for the time-parallel solve")


def engine_demo(out: Path, nproc: int) -> tuple[list[str], dict[str, Any]]:
    config = SolveConfig(
        problem="heat1d", nt=1025, nx=1025, levels=5, cf=[4], relax="FCF", cycle="V",
        nested=False, tol=1e-9, max_iter=30, verbose=True,
    )
    print(f"[engine] heat equation, MGRIT over {nproc} processes: nt={config.nt}, nx={config.nx}, "
          f"{config.levels} levels, cf=4, FCF, V-cycle", flush=True)
    parallel = run_workers(solve_worker, nproc, (config,))[0]
    config.verbose = False
    serial = solve_worker(config)
    rows = ["| iteration | residual (2 proc.) | conv. factor | residual (1 proc.) |", "|---:|---:|---:|---:|"]
    factors = [None] + parallel["convergence_factors"]
    for k, (rp, rs, f) in enumerate(zip(parallel["residuals"], serial["residuals"], factors), start=1):
        rows.append(f"| {k} | {rp:.6e} | {'-' if f is None else f'{f:.4f}'} | {rs:.6e} |")
    worst = max(abs(a - b) / max(abs(b), 1e-300) for a, b in zip(parallel["residuals"], serial["residuals"]))
    plot_residuals({f"{nproc} processes": parallel["residuals"], "1 process": serial["residuals"]},
                   str(out / "engine_residuals.png"), title="Heat1D, MGRIT (FCF, V-cycle)")
    print("\n".join(rows))
    print(f"[engine] largest relative difference of the residual histories (1 vs {nproc} processes): {worst:.2e}")
    lines = [
        "## Engine: heat equation with MGRIT, time-parallel",
        "",
        (f"`Heat1D` (PyMGRIT's discretisation), nt={config.nt}, nx={config.nx}, 5 levels, cf=4, FCF, V-cycle, "
         f"tol=1e-9, over {nproc} processes (torch.distributed, gloo) and over 1."),
        "",
        *rows,
        "",
        (f"Largest relative difference between the two histories: {worst:.2e}. "
         f"Solve time: {parallel['seconds']:.3f} s on {nproc} processes, {serial['seconds']:.3f} s on 1."),
        "",
        "![residuals](engine_residuals.png)",
        "",
    ]
    return lines, {"config": asdict(config), "parallel": parallel, "serial": serial, "max_rel_diff": worst}


def run(args: argparse.Namespace) -> int:
    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = ["# torchpint demo report", ""]
    results: dict[str, Any] = {}
    lines, results["engine"] = engine_demo(out, args.nproc)
    report += lines
    # The neural-network capabilities, each contributing a section on the embedded digits data.
    for key, module in SECTIONS:
        try:
            section = importlib.import_module(module).demo_section
        except ModuleNotFoundError as error:
            if error.name != module:
                raise
            continue
        print(f"\n[{key}]", flush=True)
        lines, results[key] = section(out)
        report += lines
    report.append(f"Total demo time: {time.perf_counter() - start:.1f} s.")
    (out / "report.md").write_text("\n".join(report) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nreport: {os.path.abspath(out / 'report.md')}")
    return 0
