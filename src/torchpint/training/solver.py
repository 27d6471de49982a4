"""MGRIT over the training steps: the whole weight trajectory solved at once.

``train_mgrit(task, options)`` runs FAS-MGRIT (the engine) on ``w_{i+1} = Phi_i(w_i)``,
``i = 0..N-1``, with the per-level problems of :mod:`torchpint.training.problem`, and returns
the converged trajectory, which equals serial training's to the tolerance.

Options as in Schroder (2017): FCF-relaxation, ``m = 2`` on every level, coarsening until the
coarsest level has at most 10 steps (``cycle="V"`` or ``"F"``) or exactly one coarsening
(``cycle="two-level"``, engine ``levels=2``); initial guess ``w_0`` then zeros (no nested
iteration); stop when ``||r||_2 <= 1e-9 sqrt(N)``; at most 50 iterations.  A level may end with
a partial C-interval (N = 100 coarsens 100 -> 50 -> 25 -> 12 -> 6, as XBraid does).

``rho = (||r_k|| / ||r_0||)^(1/k)`` with ``r_0`` the residual of the initial guess; the run
stops with :class:`DivergenceError` when the residual grows for ``divergence_iters``
iterations in a row, and with :class:`NonFiniteWeightsError` (naming the step) on NaN/Inf.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from torchpint.engine import MGRIT
from torchpint.engine.comm import Comm, default_comm
from torchpint.engine.state import State, batch_sq_norms, expand, leaves, take, tree_map
from torchpint.training.errors import DivergenceError, TrainingConfigError
from torchpint.training.memory import MemoryEstimate, check_limit, estimate
from torchpint.training.problem import (
    COARSE_DATA,
    COARSE_UPDATES,
    LevelProblem,
    Monitor,
    TrainingTask,
    level_learning_rate,
    state_bytes,
)
from torchpint.training.speedup import count_levels, level_steps, potential_speedup, sequential_cost

CYCLES = ("two-level", "V", "F")


@dataclass
class MGRITOptions:
    """How to solve (defaults: the paper's settings, Solver 1 coarse learning rates)."""

    cycle: str = "two-level"  # "two-level", "V" or "F"
    m: int = 2  # coarsening factor on every level
    max_coarse: int = 10  # V/F: coarsen until the coarsest level has at most this many steps
    levels: int | None = None  # override the number of levels
    relax: str = "FCF"
    tol: float | None = None  # absolute, on the residual 2-norm; None: 1e-9 * sqrt(N)
    max_iter: int = 50
    divergence_iters: int = 3  # stop when ||r_k|| > ||r_{k-1}|| this many iterations in a row
    growth: float = 2.0  # alpha_l = min(growth**l * alpha_b, lr_max); 1 = the naive solver
    lr_max: float = math.inf
    coarse_data: str = "same"  # see torchpint.training.problem
    coarse_update: str = "scaled"  # "scaled" (the paper) or "frozen" (see torchpint.training.problem)
    store: str = "all"  # "all" points in the result or only the finest level's "c"-points
    coarse_storage: str = "all"  # "c": intermediate coarse levels keep only their C-points
    max_memory: int | None = None  # bytes per process; refuse before allocating when above
    check_finite: bool = True
    verbose: bool = False  # one line per iteration (rank 0)
    chunk_bytes: int = 256 << 20  # activation memory of one batched call; larger calls are split
    reference: bool = True  # the memory estimate counts a serial reference trajectory

    def validate(self) -> None:
        if self.cycle not in CYCLES:
            raise TrainingConfigError(f"cycle must be one of {', '.join(CYCLES)}, got {self.cycle!r}")
        if self.m < 2:
            raise TrainingConfigError(f"the coarsening factor must be >= 2, got {self.m}")
        if self.max_coarse < 1:
            raise TrainingConfigError(f"max_coarse must be >= 1, got {self.max_coarse}")
        if not (self.growth >= 1 and math.isfinite(self.growth)):
            raise TrainingConfigError(f"the learning-rate growth must be >= 1, got {self.growth}")
        if not self.lr_max > 0:
            raise TrainingConfigError(f"alpha_max must be > 0, got {self.lr_max}")
        if self.coarse_data not in COARSE_DATA:
            raise TrainingConfigError(f"coarse data must be one of {', '.join(COARSE_DATA)}, got {self.coarse_data!r}")
        if self.coarse_update not in COARSE_UPDATES:
            raise TrainingConfigError(f"coarse update must be one of {', '.join(COARSE_UPDATES)}, got {self.coarse_update!r}")
        if self.max_iter < 1:
            raise TrainingConfigError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.tol is not None and not (self.tol >= 0 and math.isfinite(self.tol)):
            raise TrainingConfigError(f"tol must be a finite number >= 0, got {self.tol}")
        if self.divergence_iters < 1:
            raise TrainingConfigError(f"divergence_iters must be >= 1, got {self.divergence_iters}")
        if self.store not in ("all", "c"):
            raise TrainingConfigError(f"store must be 'all' or 'c', got {self.store!r}")
        if self.coarse_storage not in ("all", "c"):
            raise TrainingConfigError(f"coarse storage must be 'all' or 'c', got {self.coarse_storage!r}")


@dataclass
class TrainingResult:
    """The solved trajectory and how the solve went."""

    weights: Tensor  # final flat weights w_N
    final_state: Any  # final state (weights plus optimizer state)
    trajectory: State | None  # stacked states at the times ``t`` (every point or C-points)
    t: Tensor  # training-step indices of the stored points
    residuals: list[float]  # ||r_k||, k = 1..iterations
    initial_residual: float  # ||r_0||, the initial guess's residual
    iterations: int
    converged: bool
    tol: float
    levels: int
    level_steps: list[int]
    seconds: float
    setup_seconds: float
    calls: dict[int, list[int]]  # batched Phi calls per level on this rank (batch sizes)
    lrs: list[float]
    options: dict[str, Any] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)

    @property
    def rho(self) -> float:
        """``(||r_k|| / ||r_0||)^(1/k)``, the paper's average convergence factor."""
        k = len(self.residuals)
        if k == 0 or self.initial_residual <= 0 or self.residuals[-1] <= 0:
            return math.nan
        return (self.residuals[-1] / self.initial_residual) ** (1.0 / k)

    @property
    def factors(self) -> list[float]:
        rs = [self.initial_residual, *self.residuals]
        return [b / a if a > 0 else math.nan for a, b in zip(rs[:-1], rs[1:])]

    @property
    def cycle(self) -> str:
        return str(self.options.get("cycle", "two-level"))

    @property
    def potential_speedup(self) -> float:
        return potential_speedup(self.level_steps[0], self.iterations, self.cycle, self.levels, int(self.options.get("m", 2)))

    @property
    def sequential_cost(self) -> int:
        return sequential_cost(self.iterations, self.cycle, self.levels, self.level_steps[0], int(self.options.get("m", 2)))

    def summary(self) -> dict[str, Any]:
        """JSON-ready (no tensors)."""
        return {
            "iterations": self.iterations,
            "converged": self.converged,
            "rho": self.rho,
            "residuals": self.residuals,
            "initial_residual": self.initial_residual,
            "convergence_factors": self.factors,
            "tol": self.tol,
            "levels": self.levels,
            "level_steps": self.level_steps,
            "learning_rates": self.lrs,
            "potential_speedup": self.potential_speedup,
            "sequential_phi": self.sequential_cost,
            "seconds": self.seconds,
            "setup_seconds": self.setup_seconds,
            "phase_seconds": self.phase_seconds,
            "batched_calls_per_level": {str(k): len(v) for k, v in self.calls.items()},
            "options": self.options,
            "memory": self.memory,
        }


def plan_levels(n_steps: int, options: MGRITOptions) -> int:
    if options.levels is not None:
        if options.levels < 1:
            raise TrainingConfigError(f"levels must be >= 1, got {options.levels}")
        levels = options.levels
    else:
        levels = count_levels(n_steps, options.cycle, options.m, options.max_coarse)
    steps = level_steps(n_steps, levels, options.m)
    if steps[-1] < 1:
        raise TrainingConfigError(f"{levels} levels with m={options.m} leave no step on the coarsest level of N={n_steps}")
    return levels


def build_levels(task: TrainingTask, options: MGRITOptions, levels: int, monitor: Monitor, chunk: int | None) -> list[LevelProblem]:
    lr = task.update.lr
    if options.coarse_update == "frozen":
        cap = None if math.isinf(options.lr_max) else max(1, int(options.lr_max // lr))
        return [
            LevelProblem(task, lvl, lr, options.coarse_data, monitor=monitor, check_finite=options.check_finite,
                         chunk=chunk, coarse_update="frozen", frozen_cap=cap)
            for lvl in range(levels)
        ]
    return [
        LevelProblem(task, lvl, level_learning_rate(lr, lvl, options.growth, options.lr_max), options.coarse_data,
                     monitor=monitor, check_finite=options.check_finite, chunk=chunk)
        for lvl in range(levels)
    ]


def activation_chunk(task: TrainingTask, chunk_bytes: int) -> tuple[int, int]:
    """(bytes of activations per weight vector in a batched step, states per batched call)."""
    per_state = 3 * task.activation_numel() * torch.finfo(task.dtype).bits // 8
    if task.schedule.is_full_batch:
        per_state = max(per_state, 1)
    return per_state, max(1, chunk_bytes // max(per_state, 1))


def memory_estimate(task: TrainingTask, options: MGRITOptions, nproc: int = 1) -> MemoryEstimate:
    levels = plan_levels(task.steps, options)
    points = [n + 1 for n in level_steps(task.steps, levels, options.m)]
    per_state, chunk = activation_chunk(task, options.chunk_bytes)
    return estimate(state_bytes(task), points, activation_bytes=per_state, chunk=chunk, store=options.store,
                    coarse_storage=options.coarse_storage, nproc=nproc, m=options.m, reference=options.reference)


def initial_residual(problem: LevelProblem, u0: Any, owned: range, comm: Comm, chunk: int) -> float:
    """``||r_0||``: ``Phi(w_0) - 0`` at point 1 and ``Phi(0) - 0`` at points 2..N, over the points ``owned``."""
    lo, hi = max(owned.start, 1), owned.stop
    zero = tree_map(torch.zeros_like, u0)
    total = torch.zeros((), dtype=torch.float64)
    for a in range(lo, hi, chunk):
        b = min(a + chunk, hi)
        prev = expand(zero, b - a)
        if a == 1:
            prev = tree_map(lambda x, first: torch.cat([first.unsqueeze(0), x[1:]]), prev, u0)
        t0 = torch.arange(a - 1, b - 1, dtype=torch.float64)
        images = problem.step_batch(prev, t0, t0 + 1)
        total = total + batch_sq_norms(images).sum()
    return math.sqrt(float(comm.sum(total)))


# (k, ||r_k||, ||r_k|| / ||r_{k-1}||, rho so far): the engine's per-iteration callback plus rho against r_0.
ConvergenceCallback = Callable[[int, float, float, float], None]


@dataclass
class SolveSnapshot:
    """This rank's part of a solve after ``iteration`` iterations: enough to continue it exactly.

    ``block`` holds the states at the training-step points ``lo .. hi-1`` (this rank's block of
    the trajectory); a solve resumed from the snapshots of every rank gives the same remaining
    residual history and final weights as the uninterrupted solve.
    """

    iteration: int
    residuals: list[float]  # ||r_1|| .. ||r_iteration||
    initial_residual: float  # ||r_0||
    lo: int
    hi: int
    block: State


def train_mgrit(
    task: TrainingTask,
    options: MGRITOptions | None = None,
    *,
    comm: Comm | None = None,
    callback: ConvergenceCallback | None = None,
    keep_trajectory: bool = True,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[SolveSnapshot], None] | None = None,
    resume: SolveSnapshot | None = None,
) -> TrainingResult:
    """Solve the whole training trajectory with MGRIT, on this process or this rank of ``comm``.

    Call it on every rank of the group (``comm``, default: the initialised ``torch.distributed``
    group, else this one process); ranks own contiguous blocks of training steps.  It never
    starts processes: the ``mgrit-train`` command or the caller does (``torchpint.run.launch``).

    Long solves: every ``checkpoint_every`` iterations (0: never) ``on_checkpoint`` gets this
    rank's :class:`SolveSnapshot`; ``resume`` (this rank's snapshot, taken with the same task,
    options and number of ranks) continues that solve where it stopped.
    """
    options = options or MGRITOptions()
    options.validate()
    n = task.steps
    if n < 2:
        raise TrainingConfigError(f"training needs at least 2 steps (N >= 2), got N={n}")
    if checkpoint_every < 0:
        raise TrainingConfigError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    comm = comm if comm is not None else default_comm()
    if comm.size > n + 1:
        raise TrainingConfigError(f"{comm.size} processes are more than the {n + 1} time points (every rank must own one)")
    levels = plan_levels(n, options)
    mem = memory_estimate(task, options, comm.size)
    check_limit(mem, options.max_memory)
    tol = 1e-9 * math.sqrt(n) if options.tol is None else options.tol
    per_state, chunk = activation_chunk(task, options.chunk_bytes)

    monitor = Monitor(record=False, iteration=0)
    problems = build_levels(task, options, levels, monitor, chunk)
    u0 = task.initial_state()
    if not all(bool(torch.isfinite(x).all()) for x in leaves(u0)):
        raise TrainingConfigError("the initial weights are not finite")
    residuals: list[float] = []
    rising = 0
    verbose = options.verbose and comm.rank == 0

    def on_iteration(k: int, norm: float, _factor: float | None) -> None:
        nonlocal rising
        previous = residuals[-1] if residuals else r0
        residuals.append(norm)
        monitor.iteration = k + 1
        factor = norm / previous if previous > 0 else math.nan
        rho = (norm / r0) ** (1.0 / k) if r0 > 0 and norm > 0 else math.nan
        if verbose:
            print(f"  iter {k:3d} | residual {norm:11.4e} | factor {factor:7.4f} | rho so far {rho:7.4f} "
                  f"| {time.perf_counter() - start:7.2f} s", flush=True)
        if callback is not None:
            callback(k, norm, factor, rho)
        rising = rising + 1 if factor > 1 else 0
        if rising >= options.divergence_iters:
            history = ", ".join(f"{r:.3e}" for r in [r0, *residuals])
            raise DivergenceError(
                f"MGRIT diverges: the residual grew in {rising} iterations in a row (iterations "
                f"{k - rising + 1}..{k}, rho > 1); stopped. Residuals ||r_0..r_{k}||: {history}. "
                f"Try a smaller alpha_max / growth, or the two-level solver",
                [r0, *residuals],
            )

    kwargs: dict[str, Any] = dict(relax=options.relax, cycle="V" if options.cycle == "two-level" else options.cycle, nested=False,
                  tol=tol, max_iter=options.max_iter, comm=comm, store=options.store,
                  coarse_storage=options.coarse_storage, gather=True,
                  callback=on_iteration)
    t = torch.arange(n + 1, dtype=torch.float64)
    # N steps need not be a multiple of m^(levels-1): the last C-interval of a level may be partial.
    solver = MGRIT(problems, t, levels=levels, cf=options.m, allow_partial=True, **kwargs)
    owned = solver.owned
    if resume is not None and (resume.lo, resume.hi) != (owned.start, owned.stop):
        raise TrainingConfigError(
            f"the snapshot holds training-step points {resume.lo}..{resume.hi - 1}, this rank owns "
            f"{owned.start}..{owned.stop - 1}: resume with the number of processes that wrote it")

    def snapshot(k: int, block: State) -> None:
        if on_checkpoint is not None and checkpoint_every > 0 and k % checkpoint_every == 0:
            on_checkpoint(SolveSnapshot(k, list(residuals), r0, owned.start, owned.stop, tree_map(torch.clone, block)))

    # Warm-up: the first torch.func / autograd calls of a process carry a one-off cost that
    # is no part of the solve (serial training pays it before its clock starts too).
    two = torch.tensor([0.0, 1.0], dtype=torch.float64)
    problems[0].step_batch(expand(u0, 2), two, two + 1)
    problems[0].step_batch(expand(u0, 1), two[:1], two[:1] + 1)
    start = time.perf_counter()
    monitor.record = True  # the initial residual is part of the solve's time (one batched sweep)
    if resume is None:
        r0 = initial_residual(problems[0], u0, owned, comm, min(chunk, 4096))
        monitor.iteration = 1
    else:
        r0 = resume.initial_residual
        residuals.extend(resume.residuals)
        for previous, norm in zip([r0, *residuals[:-1]], residuals):
            rising = rising + 1 if previous > 0 and norm / previous > 1 else 0
        monitor.iteration = resume.iteration + 1
    setup_seconds = time.perf_counter() - start
    if resume is None:
        result = solver.solve(u0, snapshot=snapshot)
    else:
        result = solver.solve(u0, guess=resume.block, done=resume.residuals, snapshot=snapshot)
    seconds = time.perf_counter() - start

    stored_t = result.t
    if int(stored_t[-1]) == n:
        final = take(result.u, -1)
    else:  # store="c" and the last point is an F-point: step there from the last C-point
        final = take(result.u, -1)
        problems[0].monitor.record = False
        for i in range(int(stored_t[-1]), n):
            final = problems[0].step(final, float(i), float(i + 1))
    weights = task.update.weights(final)
    opts = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in asdict(options).items()}
    opts.update({"levels": levels, "nproc": comm.size, "tol": tol, "optimizer": task.update.name})
    return TrainingResult(
        weights=weights,
        final_state=final,
        trajectory=result.u if keep_trajectory else None,
        t=stored_t,
        residuals=residuals,
        initial_residual=r0,
        iterations=result.iterations,
        converged=result.converged,
        tol=tol,
        levels=levels,
        level_steps=level_steps(n, levels, options.m),
        seconds=seconds,
        setup_seconds=setup_seconds,
        calls={k: list(v) for k, v in monitor.calls.items()},
        lrs=[p.lr for p in problems],
        options=opts,
        phase_seconds=result.phase_seconds,
        memory=mem.as_dict(),
    )


def max_difference(a: State, b: State) -> float:
    """Largest absolute difference between two states (or stacked trajectories)."""
    return max(float((x.to(torch.float64) - y.to(torch.float64)).abs().max()) for x, y in zip(leaves(a), leaves(b)))


def relative_difference(a: State, b: State) -> float:
    """``max |a - b| / max |b|``: the difference on the scale of the reference ``b``."""
    scale = max(float(y.to(torch.float64).abs().max()) for y in leaves(b))
    return max_difference(a, b) / scale if scale > 0 else max_difference(a, b)


__all__ = [
    "CYCLES",
    "MGRITOptions",
    "TrainingResult",
    "ConvergenceCallback",
    "SolveSnapshot",
    "initial_residual",
    "max_difference",
    "relative_difference",
    "memory_estimate",
    "plan_levels",
    "train_mgrit",
]

