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
import json
import math
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from torchpint.cli.plots import plot_file, save_figure
from torchpint.training.errors import DivergenceError, NonFiniteWeightsError
from torchpint.training.memory import check_limit, parse_memory
from torchpint.training.paper import PAPER_N, PAPER_TABLES
from torchpint.training.problem import level_learning_rate
from torchpint.training.serial import serial_train, torch_optim_train
from torchpint.training.solver import max_difference, memory_estimate, plan_levels, relative_difference, train_mgrit
from torchpint.training.speedup import calibrate, level_steps, potential_speedup, predict_seconds
from torchpint.training.tasks import SOLVERS, TASKS, TaskSpec, accuracy, build_task, digits_data

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
    parser.add_argument("--nproc", type=int, default=1, help="time-parallel processes (torch.distributed, gloo)")
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


# ---------------------------------------------------------------------------------- one case
def solve_case(spec: TaskSpec, nproc: int = 1, *, predict: bool = True, quiet: bool = False) -> dict[str, Any]:
    """MGRIT, serial training, their comparison and the speedup models for one ``spec``."""
    task, options = build_task(spec)  # validates everything before any worker starts
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    mem = memory_estimate(task, options, nproc)
    check_limit(mem, options.max_memory)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    levels = plan_levels(task.steps, options)
    lrs = [level_learning_rate(task.update.lr, lvl, options.growth, options.lr_max) for lvl in range(levels)]
    say(f"torchpint mgrit-train {spec.task}: N={task.steps} steps, solver {spec.solver}, {options.cycle} "
        f"({levels} levels, steps per level {level_steps(task.steps, levels, options.m)}), alpha_l = "
        f"{[round(a, 6) for a in lrs]}, {task.update.name}, FCF, m={options.m}, coarse data '{options.coarse_data}', "
        f"tol={1e-9 * math.sqrt(task.steps) if options.tol is None else options.tol:.3g}, nproc={nproc}")
    say(f"memory: {mem.describe()}")
    options.verbose = not quiet
    result = train_mgrit(task, replace(options), nproc=nproc)

    serial = serial_train(task, keep="all" if options.store == "all" else "last")
    optim = torch_optim_train(task, keep="last")
    final_diff = max_difference(result.weights, serial.weights)
    if serial.trajectory is not None and result.trajectory is not None:
        traj_diff = max_difference(task.update.weights(result.trajectory), task.update.weights(serial.trajectory))
    else:
        traj_diff = final_diff
    optim_diff = max_difference(result.weights, optim.weights)
    out: dict[str, Any] = {
        "task": spec.task,
        "spec": asdict(spec),
        "nproc": nproc,
        **result.summary(),
        "max_weight_diff_vs_serial": traj_diff,
        "final_weight_diff_vs_serial": final_diff,
        "final_weight_rel_diff_vs_serial": relative_difference(result.weights, serial.weights),
        "final_weight_diff_vs_torch_optim": optim_diff,
        "serial_seconds": serial.seconds,
        "torch_optim_seconds": optim.seconds,
        "num_weights": task.num_weights,
    }
    out["seconds_ratio_serial_over_mgrit"] = optim.seconds / result.seconds if result.seconds > 0 else math.nan
    if predict:
        largest = max((max(v) for v in result.calls.values() if v), default=1)
        cost = calibrate(task, largest, repeats=2, chunk=None)
        out["predicted_seconds"] = predict_seconds(result.calls, cost, 1)
        out["predicted_serial_seconds"] = task.steps * cost.single
        out["step_cost"] = cost.as_dict()
    if spec.task == "digits":
        _, _, xt, yt = digits_data(spec.seed)
        out["test_accuracy_mgrit"] = accuracy(task, result.weights, xt, yt)
        out["test_accuracy_serial"] = accuracy(task, serial.weights, xt, yt)
    _print_result(out, say)
    return out


def _print_result(out: dict[str, Any], say: Any) -> None:
    status = "converged" if out["converged"] else "NOT converged"
    say(f"result: {status} after {out['iterations']} iterations, rho = {out['rho']:.3f} "
        f"((||r_k||/||r_0||)^(1/k), ||r_0|| = {out['initial_residual']:.3e})")
    say(f"  max |w - w_serial| over the trajectory {out['max_weight_diff_vs_serial']:.2e}, final weights "
        f"{out['final_weight_diff_vs_serial']:.2e} (relative {out['final_weight_rel_diff_vs_serial']:.1e}; "
        f"vs torch.optim: {out['final_weight_diff_vs_torch_optim']:.2e})")
    say(f"  potential speedup (paper model, {out['sequential_phi']} sequential Phi for N={out['level_steps'][0]}): "
        f"{out['potential_speedup']:.2f}")
    line = (f"  seconds: MGRIT {out['seconds']:.3f} on {out['nproc']} process(es); serial training "
            f"{out['torch_optim_seconds']:.3f} (torch.optim), {out['serial_seconds']:.3f} (same Phi); "
            f"serial/MGRIT = {out['seconds_ratio_serial_over_mgrit']:.2f}")
    say(line)
    if "predicted_seconds" in out:
        say(f"  model (calibrated batched-step cost, no communication): MGRIT {out['predicted_seconds']:.3f} s "
            f"on {out['nproc']} process(es), serial {out['predicted_serial_seconds']:.3f} s")
    if "test_accuracy_mgrit" in out:
        say(f"  test accuracy: MGRIT weights {out['test_accuracy_mgrit']:.4f}, serial weights "
            f"{out['test_accuracy_serial']:.4f}")


# ---------------------------------------------------------------------------------- paper tables
def paper_table(number: int, max_n: int = 6400, nproc: int = 1, *, quiet: bool = False,
                base: TaskSpec | None = None) -> dict[str, Any]:
    """Rerun paper table ``number`` for N <= max_n; paper vs measured, side by side."""
    table = PAPER_TABLES[number]
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    base = base or TaskSpec()
    rows: list[dict[str, Any]] = []
    say(f"paper table {number}: {table.title}")
    header = (f"{'N':>6} | {'paper it/rho':>12} | {'ours it/rho':>11} | {'d it':>4} | {'max |w-w_ser|':>13} | "
              f"{'final rel':>9} | "
              f"{'levels':>6} | {'pot. speedup':>12} | {'MGRIT s':>8} | {'serial s':>8}")
    say(header)
    say("-" * len(header))
    for n, it_paper, rho_paper in table.rows(max_n):
        spec = replace(base, task="xor", steps=n, solver=table.solver, cycle=table.cycle, alpha_b=table.alpha_b,
                       alpha_max=table.alpha_max, verbose=False)
        task, options = build_task(spec)
        options.verbose = False
        result = train_mgrit(task, options, nproc=nproc)
        serial = serial_train(task, keep="all")
        optim = torch_optim_train(task, keep="last")
        diff = max_difference(task.update.weights(result.trajectory), task.update.weights(serial.trajectory))
        row = {
            "N": n, "paper_iterations": it_paper, "paper_rho": rho_paper, "iterations": result.iterations,
            "rho": result.rho, "converged": result.converged, "max_weight_diff_vs_serial": diff,
            "final_weight_diff_vs_serial": max_difference(result.weights, serial.weights),
            "final_weight_rel_diff_vs_serial": relative_difference(result.weights, serial.weights),
            "levels": result.levels, "potential_speedup": result.potential_speedup,
            "paper_potential_speedup": _paper_speedup(n, it_paper, table.cycle, result.levels),
            "seconds": result.seconds, "serial_seconds": serial.seconds, "torch_optim_seconds": optim.seconds,
            "residuals": result.residuals, "initial_residual": result.initial_residual,
        }
        rows.append(row)
        say(f"{n:>6} | {it_paper:>5} / {rho_paper:4.2f} | {result.iterations:>4} / {result.rho:4.2f} | "
            f"{result.iterations - it_paper:>+4d} | {diff:13.2e} | {row['final_weight_rel_diff_vs_serial']:9.1e} | "
            f"{result.levels:>6} | {result.potential_speedup:12.2f} | "
            f"{result.seconds:8.2f} | {optim.seconds:8.2f}")
    worst = max(abs(r["iterations"] - r["paper_iterations"]) for r in rows)
    say(f"largest difference from the paper's iteration counts: {worst} (N <= {max_n}); "
        f"rho here is (||r_k||/||r_0||)^(1/k) with r_0 the initial guess's residual")
    return {"table": number, "title": table.title, "rows": rows, "max_iteration_difference": worst, "nproc": nproc}


def _paper_speedup(n: int, iterations: int, cycle: str, levels: int) -> float:
    return potential_speedup(n, iterations, cycle, levels)


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
    if args.nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    spec = spec_from_args(args)
    if args.paper_table is not None:
        if args.task != "xor":
            raise ValueError("--paper-table reruns the paper's XOR tables: use `torchpint mgrit-train xor --paper-table N`")
        if args.max_n < PAPER_N[0]:
            raise ValueError(f"--max-n must be >= {PAPER_N[0]}, got {args.max_n}")
        out = paper_table(args.paper_table, args.max_n, args.nproc, base=spec)
        if args.plot:
            path = plot_file(args.plot, f"paper_table_{args.paper_table}.png")
            plot_speedup({f"table {args.paper_table}": out["rows"]}, path,
                         f"paper table {args.paper_table}: {PAPER_TABLES[args.paper_table].title}, "
                         f"N <= {args.max_n}, {args.nproc} proc.")
            print(f"iterations and speedup plot: {path}")
    else:
        try:
            out = solve_case(spec, args.nproc, predict=args.predict)
        except (DivergenceError, NonFiniteWeightsError) as error:
            print(f"torchpint: stopped: {error}", file=sys.stderr, flush=True)
            if args.json:
                print(json.dumps({"error": str(error), "kind": type(error).__name__,
                                  "residuals": getattr(error, "residuals", None)}), flush=True)
            return 1
        if args.plot:
            path = plot_file(args.plot, f"mgrit_train_{spec.task}.png")
            plot_history({f"MGRIT, {args.nproc} proc.": out["residuals"]}, path,
                         f"mgrit-train {spec.task}: N={spec.steps} steps, solver {spec.solver}, {spec.cycle} cycle "
                         f"({out['levels']} levels), alpha_b={spec.resolved_alpha_b():g}, {args.nproc} proc.")
            print(f"convergence plot: {path}")
    if args.json:
        print(json.dumps(_finite(out), default=float), flush=True)
    return 0


def _finite(x: Any) -> Any:
    """Strict JSON: NaN and infinities become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
