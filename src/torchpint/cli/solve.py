"""``torchpint solve``: MGRIT on a shipped problem, serial or over ``--nproc`` processes."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from torchpint.cli.options import at_least
from torchpint.engine import MGRIT, Comm, ReversedComm, SerialComm, default_comm, time_grid
from torchpint.engine.shm import TRANSPORTS
from torchpint.engine.problem import Problem
from torchpint.errors import ConfigError
from torchpint.problems import Brusselator, Dahlquist, Heat1D, default_rhs
from torchpint.run.launch import launch, world_size
from torchpint.run.launch import rank as launch_rank
from torchpint.run.report import print_json_line
from torchpint.testing.faults import FaultyProblem

PROBLEMS = ("dahlquist", "heat1d", "brusselator")

# Per-problem defaults: Heat1D and Dahlquist as PyMGRIT's examples.
DEFAULTS: dict[str, dict[str, Any]] = {
    "dahlquist": {"nt": 101, "t_start": 0.0, "t_stop": 5.0},
    "heat1d": {"nt": 65, "t_start": 0.0, "t_stop": 2.0},
    "brusselator": {"nt": 257, "t_start": 0.0, "t_stop": 6.4},
}


@dataclass
class SolveConfig:
    """Everything a worker needs to build the problem and the solver (picklable)."""

    problem: str = "heat1d"
    nt: int = 65
    t_start: float = 0.0
    t_stop: float = 2.0
    levels: int = 2
    cf: list[int] = field(default_factory=lambda: [2])
    relax: str = "FCF"
    weight_c: float = 1.0
    cycle: str = "V"
    nested: bool = True
    tol: float = 1e-7
    rtol: float = 0.0
    max_iter: int = 100
    allow_partial: bool = False
    coarse_storage: str = "all"
    # problem parameters
    nx: int = 65
    x_start: float = 0.0
    x_end: float = 2.0
    a: float = 1.0
    lam: float = -1.0
    method: str = "BE"
    # distribution: explicit finest-level blocks, ranks numbered backwards (as an adjoint solve does)
    partition: list[tuple[int, int]] | None = None
    reverse_ranks: bool = False
    # messages between ranks: "auto" (shared memory when all ranks are on this machine), "shm", "gloo"
    transport: str = "auto"
    # rank 0 starts the next iteration before the residual's sum is complete when its own part shows
    # the iteration is not the last (MGRIT's run_ahead; the same results)
    run_ahead: bool = True
    # record the second iteration and replay it for the later ones (MGRIT's replay; the same results)
    replay: bool = True
    # the earlier rank steps the later rank's first halo image (MGRIT's halo_images; every problem here
    # can be stepped anywhere on every rank)
    halo_images: bool = True
    # output
    verbose: bool = True
    return_solution: bool = False
    fault: dict[str, Any] | None = None  # {"kind": "nan"|"exit", "after_steps": n, "rank": r}

    def cf_list(self) -> list[int]:
        return self.cf * max(self.levels - 1, 1) if len(self.cf) == 1 else self.cf


def build_problem(config: SolveConfig) -> Problem:
    if config.problem == "dahlquist":
        problem: Problem = Dahlquist(lam=config.lam, method=config.method)
    elif config.problem == "heat1d":
        problem = Heat1D(config.x_start, config.x_end, config.nx, config.a, rhs=default_rhs(config.a))
    elif config.problem == "brusselator":
        problem = Brusselator()
    else:
        raise ValueError(f"unknown problem {config.problem!r}: use one of {', '.join(PROBLEMS)}")
    if config.fault:
        problem = FaultyProblem(problem, **config.fault)
    return problem


def build_solver(config: SolveConfig, callback: Any = None, comm: Comm | None = None) -> MGRIT:
    """The solver of ``config``; its comm is made from ``config.transport`` (collective) unless given."""
    if comm is None:
        comm = default_comm(config.transport)
        if config.reverse_ranks:
            comm = ReversedComm(comm)
    return MGRIT(
        build_problem(config),
        time_grid(config.t_start, config.t_stop, config.nt),
        levels=config.levels,
        cf=config.cf_list(),
        relax=config.relax,
        weight_c=config.weight_c,
        cycle=config.cycle,
        nested=config.nested,
        tol=config.tol,
        rtol=config.rtol,
        max_iter=config.max_iter,
        callback=callback,
        partition=config.partition,
        allow_partial=config.allow_partial,
        coarse_storage=config.coarse_storage,
        comm=comm,
        run_ahead=config.run_ahead,
        replay=config.replay,
        halo_images=config.halo_images,
    )


def print_iteration(iteration: int, residual: float, factor: float | None) -> None:
    rate = "       -" if factor is None else f"{factor:8.4f}"
    print(f"  iter {iteration:3d} | residual {residual:11.4e} | conv. factor {rate}", flush=True)


def solve_worker(config: SolveConfig) -> dict[str, Any]:
    """Build and run the solve on this process (rank 0 reports); returns the summary."""
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    callback = print_iteration if (config.verbose and rank == 0) else None
    solver = build_solver(config, callback)
    result = solver.solve()
    summary = result.summary()
    if config.return_solution:
        summary["t"] = result.t.tolist()
        summary["u"] = result.u.tolist()  # type: ignore[union-attr]
    return summary


def solve_many(configs: list[SolveConfig]) -> list[dict[str, Any]]:
    """Several solves in one process group (one worker start-up for many checks)."""
    return [solve_worker(config) for config in configs]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("problem", choices=PROBLEMS, help="which problem to solve")
    parser.add_argument("--nt", type=int, help="time points including t_start (as PyMGRIT)")
    parser.add_argument("--t-start", type=float)
    parser.add_argument("--t-stop", type=float)
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--cf", default="2", help="coarsening factor, or one per level: 4,2")
    parser.add_argument("--relax", default="FCF", help="F, FCF or F(CF)^k")
    parser.add_argument("--weight-c", type=float, default=1.0, help="C-relaxation weight")
    parser.add_argument("--cycle", default="V", choices=("V", "F"))
    parser.add_argument("--nested", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--tol", type=float, default=1e-7, help="absolute tolerance")
    parser.add_argument("--rtol", type=float, default=0.0, help="tolerance relative to iteration 1")
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--allow-partial", action="store_true",
                        help="accept nt whose last C-interval is partial (as PyMGRIT)")
    parser.add_argument("--coarse-storage", default="all", choices=("all", "c"),
                        help="keep every point, or only C-points, on the intermediate coarse levels")
    parser.add_argument("--nproc", type=int, default=None,
                        help="time-parallel processes (default 1; under torchrun, torchrun's world size)")
    parser.add_argument("--transport", default="auto", choices=TRANSPORTS,
                        help="messages between ranks: shared memory when all ranks are on this machine (auto), "
                             "always shared memory (shm), or the process group's gloo")
    parser.add_argument("--run-ahead", action=argparse.BooleanOptionalAction, default=True,
                        help="rank 0 starts the next iteration while the residual's sum over ranks is still "
                             "out when its own part shows the iteration is not the last (same results)")
    parser.add_argument("--replay", action=argparse.BooleanOptionalAction, default=True,
                        help="record the second iteration's steps, messages and array operations and replay "
                             "them for the later iterations, without the cycle's Python (same results)")
    parser.add_argument("--halo-images", action=argparse.BooleanOptionalAction, default=True,
                        help="a rank sends the next one the step of its last point where that rank's first "
                             "C-point needs it, instead of the point (same results)")
    parser.add_argument("--nx", type=int, default=65, help="heat1d: grid points incl. boundaries")
    parser.add_argument("--x-start", type=float, default=0.0)
    parser.add_argument("--x-end", type=float, default=2.0)
    parser.add_argument("--a", type=float, default=1.0, help="heat1d: thermal conductivity")
    parser.add_argument("--lam", type=float, default=-1.0, help="dahlquist: lambda")
    parser.add_argument("--method", default="BE", choices=("BE", "FE", "TR"), help="dahlquist scheme")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    parser.add_argument("--plot", metavar="FILE.png", help="write the convergence history")
    parser.add_argument("--inject-fault", help=argparse.SUPPRESS)  # kind:after_steps:rank


def parse_cf(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--cf must be an integer or a comma-separated list, got {text!r}") from None


def config_from_args(args: argparse.Namespace) -> SolveConfig:
    defaults = DEFAULTS[args.problem]
    fault = None
    if args.inject_fault:
        kind, after, rank = (args.inject_fault.split(":") + ["", ""])[:3]
        fault = {"kind": kind, "after_steps": int(after or 0), "rank": int(rank) if rank else None}
    return SolveConfig(
        problem=args.problem,
        nt=args.nt if args.nt is not None else defaults["nt"],
        t_start=args.t_start if args.t_start is not None else defaults["t_start"],
        t_stop=args.t_stop if args.t_stop is not None else defaults["t_stop"],
        levels=args.levels,
        cf=parse_cf(args.cf),
        relax=args.relax,
        weight_c=args.weight_c,
        cycle=args.cycle,
        nested=args.nested,
        tol=args.tol,
        rtol=args.rtol,
        max_iter=args.max_iter,
        allow_partial=args.allow_partial,
        coarse_storage=args.coarse_storage,
        nx=args.nx,
        x_start=args.x_start,
        x_end=args.x_end,
        a=args.a,
        lam=args.lam,
        method=args.method,
        transport=args.transport,
        run_ahead=args.run_ahead,
        replay=args.replay,
        halo_images=args.halo_images,
        fault=fault,
    )


def validate(config: SolveConfig) -> None:
    """The options the engine does not check itself (it checks the grid, levels, tolerances ...)."""
    if len(config.cf) not in (1, max(config.levels - 1, 1)):
        raise ConfigError(f"--cf must be one factor or one per coarsening (--levels {config.levels}: "
                          f"{config.levels - 1}), got {len(config.cf)}: {','.join(map(str, config.cf))}")
    for factor in config.cf:
        at_least("--cf", factor, 2)
    if config.problem == "heat1d":
        at_least("--nx", config.nx, 4, why="heat1d needs at least 2 interior points")
    at_least("--max-iter", config.max_iter, 1)


def plot_title(config: SolveConfig, nproc: int) -> str:
    """The problem and the settings that shape the history, for the plot's title."""
    size = f", nx={config.nx}" if config.problem == "heat1d" else f", lambda={config.lam:g}, {config.method}" \
        if config.problem == "dahlquist" else ""
    return (f"{config.problem}, nt={config.nt}{size}: MGRIT {config.levels} levels, "
            f"cf={','.join(map(str, config.cf_list()[: config.levels - 1]))}, {config.relax}, {config.cycle}-cycle, "
            f"{nproc} proc.")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    validate(config)
    # Everything is checked here, before any worker starts: bad input never reaches a worker.
    build_solver(config, comm=SerialComm())
    size = world_size(args.nproc, allowed=lambda n: None if n <= config.nt else f"more processes than the {config.nt} time points")
    lead = launch_rank() == 0
    if lead:
        print(
            f"torchpint solve {config.problem}: nt={config.nt}, levels={config.levels}, "
            f"cf={config.cf_list()[: config.levels - 1]}, relax={config.relax}, cycle={config.cycle}, "
            f"nested={config.nested}, tol={config.tol:g}, world size {size}",
            flush=True,
        )
    summary = launch(solve_worker, (config,), nproc=size)
    if not lead:
        return 0
    status = "converged" if summary["converged"] else "not converged"
    print(
        f"{status} after {summary['iterations']} iterations in {summary['seconds']:.3f} s "
        f"(setup {summary['setup_seconds']:.3f} s)"
    )
    if args.plot:
        from torchpint.cli.plots import plot_file, plot_residuals

        path = plot_file(args.plot, f"{config.problem}_convergence.png")
        plot_residuals({f"MGRIT, {size} proc.": summary["residuals"]}, path, title=plot_title(config, size))
        print(f"convergence plot: {path}")
    if args.json:
        print_json_line({"command": "solve", "world_size": size, **summary, "config": asdict(config)})
    sys.stdout.flush()
    return 0
