"""``torchpint mgrit-train``: training parallel across training steps with MGRIT.

    torchpint mgrit-train xor --steps 400 --solver 2 --cycle two-level
    torchpint mgrit-train xor --paper-table 2          # a whole paper table, paper vs measured
    torchpint mgrit-train digits --steps 256 --cycle V --nproc 2 --json

One line per iteration (residual, factor, rho so far), then the result: iterations, rho, the
largest difference from serial training's weights, the paper's potential speedup, seconds
(MGRIT, serial training, and the calibrated model's prediction for the process count).
``--json`` prints one JSON object as the last line of standard output.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torchpint.cli.plots import plot_file, save_figure
from torchpint.errors import NonFiniteError
from torchpint.run import launch, launched_by_torchrun, open_run_folder, print_json_line, world_size
from torchpint.run.ranks import open_run_folder_on_ranks
from torchpint.training.experiment import paper_table, solve_case
from torchpint.training.memory import check_limit, parse_memory
from torchpint.training.paper import PAPER_N, PAPER_TABLES
from torchpint.training.solver import memory_estimate
from torchpint.training.tasks import SOLVERS, TASKS, TaskSpec, build_task

DEFAULT_STEPS = {"xor": 100, "addition": 100, "digits": 256}


# ---------------------------------------------------------------------------------- arguments
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=TASKS, help="xor and addition: the paper's problems; digits: an MLP")
    parser.add_argument("--steps", type=int, help="training steps N (default: xor/addition 100, digits 256)")
    parser.add_argument("--solver", choices=SOLVERS, default="1",
                        help="naive: alpha_b on every level; 1: alpha_l = min(growth^l alpha_b, alpha_max), "
                             "full batch; 2: serialized data (example i mod K, i level-local)")
    parser.add_argument("--cycle", choices=("two-level", "V", "F"), default="two-level")
    parser.add_argument("--alpha-b", type=float, help="fine learning rate (default: xor 1.0, addition 0.025, digits 0.05)")
    parser.add_argument("--alpha-max", type=float, default=8.0, help="largest coarse learning rate")
    parser.add_argument("--growth", type=float, default=2.0, help="coarse learning-rate growth per level (2, or 1.25)")
    parser.add_argument("--nproc", type=int, help="time-parallel processes (default 1; under torchrun: its world size)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    parser.add_argument("--plot", metavar="FILE.png", help="residual history (or, with --paper-table, speedup vs N)")
    parser.add_argument("--paper-table", type=int, choices=sorted(PAPER_TABLES), help="rerun a paper table (XOR)")
    parser.add_argument("--max-n", type=int, default=6400, help="--paper-table: largest N (paper: up to 25600)")
    parser.add_argument("--max-memory", help="refuse (before allocating) when one process would need more, e.g. 2G")
    parser.add_argument("--store", choices=("all", "c"), default="all",
                        help="keep every step of the solution, or only the finest level's C-points")
    parser.add_argument("--coarse-storage", choices=("all", "c"), default="all",
                        help="keep every point, or only C-points, on the coarse levels between finest and coarsest")
    parser.add_argument("--optimizer", choices=("sgd", "momentum", "adam"), default="sgd", help="digits only")
    parser.add_argument("--batch", type=int, help="Solver 2 chunk / digits minibatch size")
    parser.add_argument("--train-size", type=int, default=50, help="addition: pairs in the training set")
    parser.add_argument("--reduction", choices=("sum", "mean"), default="sum", help="addition: loss over the batch")
    parser.add_argument("--coarse-data", choices=("same", "serialized", "union", "full"),
                        help="override the data of coarse steps (see torchpint.training.problem)")
    parser.add_argument("--coarse-update", choices=("scaled", "frozen"), default="scaled",
                        help="scaled: one step with alpha_l (the paper); frozen: the m^l fine updates with the "
                             "gradient frozen (faster convergence with momentum, same gradient cost)")
    parser.add_argument("--divergence-iters", type=int, default=3,
                        help="stop when the residual grows this many iterations in a row")
    parser.add_argument("--serial-index", choices=("stop", "start"), default="stop",
                        help="Solver 2: index step i by the point it produces (stop, as the paper's XBraid code) "
                             "or starts from")
    parser.add_argument("--levels", type=int, help="override the number of levels")
    parser.add_argument("--tol", type=float, help="absolute tolerance (default 1e-9 sqrt(N))")
    parser.add_argument("--max-iter", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="run folder: run.json, checkpoints/ (every --checkpoint-every iterations), "
                                      "metrics.json, model.pt (default: none, nothing written)")
    parser.add_argument("--checkpoint-every", type=int, default=5, metavar="K",
                        help="with --out: each rank writes its block of the trajectory every K iterations")
    parser.add_argument("--resume", action="store_true", help="continue the solve in --out from its newest checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace the run that --out holds")
    parser.add_argument("--predict", action=argparse.BooleanOptionalAction, default=True,
                        help="time batched steps and print the wall-clock model's prediction")


def spec_from_args(args: argparse.Namespace) -> TaskSpec:
    return TaskSpec(
        task=args.task,
        steps=args.steps if args.steps is not None else DEFAULT_STEPS[args.task],
        solver=args.solver,
        alpha_b=args.alpha_b,
        alpha_max=args.alpha_max,
        growth=args.growth,
        cycle=args.cycle,
        optimizer=args.optimizer,
        batch=args.batch,
        train_size=args.train_size,
        reduction=args.reduction,
        coarse_data=args.coarse_data,
        coarse_update=args.coarse_update,
        divergence_iters=args.divergence_iters,
        serial_index=args.serial_index,
        seed=args.seed,
        max_iter=args.max_iter,
        tol=args.tol,
        max_memory=parse_memory(args.max_memory) if args.max_memory else None,
        store=args.store,
        coarse_storage=args.coarse_storage,
        levels=args.levels,
        verbose=True,
    )


# ---------------------------------------------------------------------------------- ranks
def rank_main(spec: TaskSpec, table: int | None, max_n: int, predict: bool, out: str | None, resume: bool,
              overwrite: bool, checkpoint_every: int, folder_opened: bool) -> dict[str, Any] | None:
    """What every rank runs: (under torchrun) rank 0 opens the run folder, then the solve; rank 0 returns the result."""
    if table is not None:
        return paper_table(table, max_n, base=spec)
    folder = None
    if out is not None and not folder_opened:  # torchrun: every rank is a launcher
        folder, resume = open_run_folder_on_ranks(out, resume=resume, overwrite=overwrite,
                                                  record={"command": "mgrit-train", "config": asdict(spec)})
    try:
        return solve_case(spec, predict=predict, run_dir=out, checkpoint_every=checkpoint_every, resume=resume)
    finally:
        if folder is not None:
            folder.close()


def plot_speedup(tables: dict[str, list[dict[str, Any]]], path: str | Path, title: str = "") -> None:
    """Iterations and potential speedup against N, the paper's next to ours (the paper's Figures 6 and 7).

    The two iteration counts are often equal: the paper's are drawn as large open squares and ours
    as small filled dots on top, so both stay visible where they coincide.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax_it, ax_sp) = plt.subplots(1, 2, figsize=(11, 4))
    for label, rows in tables.items():
        ns = [r["N"] for r in rows]
        line, = ax_it.semilogx(ns, [r["iterations"] for r in rows], "o-", markersize=5, zorder=3,
                               label=f"{label}: measured")
        ax_sp.loglog(ns, [r["potential_speedup"] for r in rows], "o-", markersize=5, color=line.get_color(), zorder=3,
                     label=f"{label}: measured iterations")
        if rows and "paper_iterations" in rows[0]:
            ax_it.semilogx(ns, [r["paper_iterations"] for r in rows], "s--", markersize=11, markerfacecolor="none",
                           markeredgewidth=1.5, color=line.get_color(), alpha=0.7, label=f"{label}: paper")
        if rows and "paper_potential_speedup" in rows[0]:
            ax_sp.loglog(ns, [r["paper_potential_speedup"] for r in rows], "s--", markersize=11,
                         markerfacecolor="none", markeredgewidth=1.5, color=line.get_color(), alpha=0.7,
                         label=f"{label}: paper's iterations")
    ax_it.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax_it.set_ylabel("MGRIT iterations")
    ax_sp.set_ylabel("potential speedup N / sigma")
    all_n = sorted({r["N"] for rows in tables.values() for r in rows})
    for ax in (ax_it, ax_sp):
        ax.set_xticks(all_n, [str(n) for n in all_n], minor=False)  # the N that ran, not 2x10^2
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("training steps N")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_history(histories: dict[str, list[float]], path: str | Path, title: str) -> None:
    from torchpint.cli.plots import plot_residuals

    plot_residuals(histories, path, title=title)


# ---------------------------------------------------------------------------------- command
def run(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    task, options = build_task(spec)  # validates everything before any worker starts
    if args.paper_table is not None:
        if args.task != "xor":
            raise ValueError("--paper-table reruns the paper's XOR tables: use `torchpint mgrit-train xor --paper-table N`")
        if args.max_n < PAPER_N[0]:
            raise ValueError(f"--max-n must be >= {PAPER_N[0]}, got {args.max_n}")
        if args.out is not None:
            raise ValueError("--paper-table writes no run folder: drop --out (use --json or --plot)")
    if args.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    if args.out is None and (args.resume or args.overwrite):
        raise ValueError("--resume and --overwrite need the run folder: --out")
    points = task.steps + 1
    nproc = world_size(args.nproc, allowed=lambda size: None if size <= points else
                       f"more processes than the {points} time points (every rank must own one)")
    check_limit(memory_estimate(task, options, nproc), options.max_memory)
    folder = None
    if args.out is not None and not launched_by_torchrun():  # this process launches: it holds the run folder
        folder = open_run_folder(args.out, resume=args.resume, overwrite=args.overwrite,
                                 record={"command": "mgrit-train", "config": asdict(spec)})
    try:
        resume = folder.resume if folder is not None else args.resume
        out = launch(rank_main, (spec, args.paper_table, args.max_n, args.predict, args.out, resume, args.overwrite,
                                 args.checkpoint_every, folder is not None), nproc=nproc)
    except NonFiniteError as error:  # divergence, NaN weights (also from a worker): exit 1, the JSON says why
        print(f"torchpint: stopped: {error}", file=sys.stderr, flush=True)
        if args.json:
            print_json_line({"error": str(error), "kind": type(error).__name__, "world_size": nproc,
                             "residuals": getattr(error, "residuals", None)})
        return 1
    finally:
        if folder is not None:
            folder.close()
    if out is None:  # a rank other than 0 under torchrun: rank 0 reports
        return 0
    if args.plot and args.paper_table is not None:
        path = plot_file(args.plot, f"paper_table_{args.paper_table}.png")
        plot_speedup({f"table {args.paper_table}": out["rows"]}, path,
                     f"paper table {args.paper_table}: {PAPER_TABLES[args.paper_table].title}, "
                     f"N <= {args.max_n}, {out['world_size']} proc.")
        print(f"iterations and speedup plot: {path}")
    elif args.plot:
        path = plot_file(args.plot, f"mgrit_train_{spec.task}.png")
        plot_history({f"MGRIT, {out['world_size']} proc.": out["residuals"]}, path,
                     f"mgrit-train {spec.task}: N={spec.steps} steps, solver {spec.solver}, {spec.cycle} cycle "
                     f"({out['levels']} levels), alpha_b={spec.resolved_alpha_b():g}, {out['world_size']} proc.")
        print(f"convergence plot: {path}")
    if args.json:
        print_json_line(out)
    return 0
