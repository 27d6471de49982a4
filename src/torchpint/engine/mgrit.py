"""Multigrid reduction in time (MGRIT) with FAS, any number of levels, V- and F-cycles.

The iteration follows the algorithm as PyMGRIT implements it, so that residual histories
compare one to one:

* initial guess: ``u_0`` at ``t_0``, zero elsewhere; with nested iteration the coarsest
  level is solved first and its solution injected level by level (a V-cycle on each
  intermediate level), the F-points being filled by the first F-relaxation;
* a cycle on level ``l``: F-relaxation (skipped on the finest level after the first
  iteration, since the previous cycle ended with one), ``cf_iter`` times C- then
  F-relaxation, FAS restriction, the cycle on ``l+1``, the coarse-grid correction at the
  C-points, an F-relaxation; an F-cycle then runs a V-cycle from every level ``l > 0``;
* the coarsest level is solved by sequential time stepping;
* after each iteration, the space-time residual ``r_i = Phi(u_{i-1}) - u_i`` at the C-points
  ``i >= 1`` of the finest level, combined in the 2-norm; stop when it is below ``tol`` (or
  below ``rtol`` times the first iteration's residual).

With several ranks the residual's sum over ranks is the one point where the first rank waits
for the others (information flows forward in time only).  With ``run_ahead`` it does not wait
when its own part of the residual already shows the iteration cannot be the last (the sum of
non-negative parts is at least each part, exactly so in floating point): it starts the next
iteration, its halos reach the later ranks earlier, and the sum is collected when it has
arrived.  Histories and solutions are the same bits; rank 0's callback may come an iteration late.

Communication lives in :mod:`torchpint.engine.comm`, layout in :mod:`~torchpint.engine.grid`,
relaxation in :mod:`~torchpint.engine.relax`, transfers in :mod:`~torchpint.engine.transfer`;
this module only sequences them.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from torchpint import errors
from torchpint.engine.comm import Comm, CompletedSum, PendingSum, default_comm
from torchpint.engine.grid import coarsen, layouts
from torchpint.engine.level import Level
from torchpint.engine.problem import Problem
from torchpint.engine.replay import IterationRecorder, Plan, Refused
from torchpint.engine.relax import Cached, c_images, c_relax, c_residual, c_slice, c_values, f_relax, sequential_solve
from torchpint.engine.result import SolveResult
from torchpint.engine.state import (
    State,
    batch_sq_norms,
    expand,
    flatten,
    length,
    put,
    take,
    tree_map,
    unflatten,
)
from torchpint.engine.timing import PhaseTimer
from torchpint.engine.transfer import correct, restrict
from torchpint.errors import ConfigError


class NonFiniteError(errors.NonFiniteError):
    """A step produced NaN or Inf; the message names the iteration."""

    def __init__(self, iteration: int, where: str = "the space-time residual") -> None:
        super().__init__(
            f"iteration {iteration}: {where} is not finite (a step returned NaN or Inf); stopped"
        )
        self.iteration = iteration


IterationCallback = Callable[[int, float, float | None], None]
# With run_ahead, at most this many residual sums are open on rank 0 (this iteration's and the
# one before): enough to absorb a later rank's lag, bounded in the messages queued meanwhile.
_OPEN_SUMS = 2


def time_grid(t_start: float, t_stop: float, nt: int) -> torch.Tensor:
    """``nt`` equidistant points, ``t_start`` and ``t_stop`` included (numpy's linspace, as PyMGRIT)."""
    if nt < 2:
        raise ConfigError(f"nt must be >= 2 (it counts the points including t_start), got {nt}")
    if not t_stop > t_start:
        raise ConfigError(f"t_stop ({t_stop}) must be greater than t_start ({t_start})")
    return torch.from_numpy(np.linspace(t_start, t_stop, nt))


def parse_relax(relax: str | int) -> int:
    """``"F"`` -> 0, ``"FCF"`` -> 1, ``"F(CF)^k"`` / ``"F(CF)k"`` -> k: the number of CF sweeps."""
    if isinstance(relax, int):
        if relax < 0:
            raise ConfigError(f"the number of CF sweeps must be >= 0, got {relax}")
        return relax
    text = relax.strip().upper().replace(" ", "")
    if text == "F":
        return 0
    if text == "FCF":
        return 1
    match = re.fullmatch(r"F\(CF\)\^?(\d+)", text)
    if match:
        return int(match.group(1))
    raise ConfigError(f"unknown relaxation {relax!r}: use 'F', 'FCF' or 'F(CF)^k'")


class MGRIT:
    """Solve ``u_{i+1} = Phi(u_i)`` on a time grid with MGRIT.

    Args:
        problem: one problem for every level, or one per level (finest first).
        t: the finest time grid (``time_grid(t_start, t_stop, nt)``).
        levels: number of levels (1 = sequential time stepping).
        cf: coarsening factor, one for all levels or one per level.
        relax: ``"F"``, ``"FCF"`` or ``"F(CF)^k"`` (or the number of CF sweeps).
        weight_c: C-relaxation weight (1 = plain C-relaxation).
        cycle: ``"V"`` or ``"F"``.
        nested: start from nested iteration (coarsest solve interpolated up).
        tol: absolute tolerance on the space-time residual 2-norm (stop when below).
        rtol: relative tolerance, against the first iteration's residual (0 = off).
        max_iter: at most this many iterations.
        comm: how ranks talk; default: torch.distributed if initialised, else one process.
        store: ``"all"`` points or only the finest level's ``"c"``-points in the result.
        coarse_storage: ``"all"`` points, or only ``"c"``-points on the coarse levels between the
            finest and the coarsest (their F-points are rebuilt on the fly when needed: about the
            same number of steps, ``1/cf`` of the memory for ``u``).  The finest level keeps the
            whole trajectory; the coarsest level, solved point by point, keeps all its points.
        gather: give every rank the whole solution (else only its own block).
        callback: called on every rank after each iteration with
            ``(iteration, residual, convergence factor or None)``.
        partition: each rank's block ``[lo, hi)`` of the finest grid (default: balanced blocks).
        allow_partial: accept levels whose last C-interval is partial (``nt - 1`` not divisible
            by the coarsening); by default such a grid is refused.
        run_ahead: rank 0 starts the next iteration without waiting for the residual's sum
            over ranks when its own part of it is already at or above the tolerance (see the
            module note); the same results, rank 0's ``callback`` possibly an iteration late.
            Only where the comm's ``isum`` does not block (shared-memory messages), and not
            while ``solve`` takes snapshots.
        replay: record the second iteration's steps, messages and array operations and replay
            them for the later iterations instead of running the cycle's Python again
            (:mod:`~torchpint.engine.replay`): the same bits, less time per iteration.  The
            solve goes on without replaying where an iteration cannot be recorded (states
            that require grad, an engine decision that reads a tensor's value).
        halo_images: a rank sends the next one the image ``Phi(u_last)`` of its last point where
            that rank's first C-point needs it, instead of the point: the step moves to the
            earlier rank, off the later rank's path (the later ranks wait for the earlier ones,
            never the reverse), with the same bits.  Only for problems that every rank can step
            at every point (off by default: a problem may hold only its own rank's part, as the
            layer-parallel networks' layers); ``torchpint solve`` turns it on for its problems.
    """

    def __init__(
        self,
        problem: Problem | Sequence[Problem],
        t: torch.Tensor | Sequence[float],
        *,
        levels: int = 2,
        cf: int | Sequence[int] = 2,
        relax: str | int = "FCF",
        weight_c: float = 1.0,
        cycle: str = "V",
        nested: bool = True,
        tol: float = 1e-7,
        rtol: float = 0.0,
        max_iter: int = 100,
        comm: Comm | None = None,
        store: str = "all",
        coarse_storage: str = "all",
        gather: bool = True,
        callback: IterationCallback | None = None,
        partition: Sequence[tuple[int, int]] | None = None,
        allow_partial: bool = False,
        run_ahead: bool = True,
        replay: bool = True,
        halo_images: bool = False,
    ) -> None:
        t = torch.as_tensor(t, dtype=torch.float64)
        cfs = [cf] * max(levels - 1, 0) if isinstance(cf, int) else list(cf)
        if cycle.upper() not in ("V", "F"):
            raise ConfigError(f"cycle must be 'V' or 'F', got {cycle!r}")
        if not (tol >= 0 and math.isfinite(tol)):
            raise ConfigError(f"tol must be a finite number >= 0, got {tol}")
        if not (rtol >= 0 and math.isfinite(rtol)):
            raise ConfigError(f"rtol must be a finite number >= 0, got {rtol}")
        if max_iter < 1:
            raise ConfigError(f"max_iter must be >= 1, got {max_iter}")
        if not (weight_c > 0 and math.isfinite(weight_c)):
            raise ConfigError(f"weight_c must be > 0, got {weight_c}")
        if store not in ("all", "c"):
            raise ConfigError(f"store must be 'all' or 'c', got {store!r}")
        if coarse_storage not in ("all", "c"):
            raise ConfigError(f"coarse_storage must be 'all' or 'c', got {coarse_storage!r}")
        for lvl, m in enumerate(cfs[: max(levels - 1, 0)]):
            if m < 2:
                raise ConfigError(f"cf must be >= 2, got cf={m} for level {lvl}")
        self.grids = coarsen(t, cfs, levels, allow_partial)
        if isinstance(problem, Sequence):
            if len(problem) != levels:
                raise ConfigError(f"got {len(problem)} problems for {levels} levels")
            self.problems = list(problem)
        else:
            self.problems = [problem] * levels
        self.cf = cfs[: levels - 1]
        self.cf_iter = parse_relax(relax)
        self.weight_c = float(weight_c)
        self.cycle = cycle.upper()
        self.nested = nested
        self.tol = float(tol)
        self.rtol = float(rtol)
        self.max_iter = int(max_iter)
        self.comm = comm if comm is not None else default_comm()
        self.store = store
        self.coarse_storage = coarse_storage
        self.gather = gather
        self.callback = callback
        self.run_ahead = bool(run_ahead)
        self.replay = bool(replay)
        self.halo_images = bool(halo_images)
        self.layouts = layouts(
            self.grids, self.cf, self.comm.rank, self.comm.size, list(partition) if partition is not None else None
        )

    @property
    def num_levels(self) -> int:
        return len(self.grids)

    @property
    def owned(self) -> range:
        """The finest-level points this rank owns (``guess`` and ``snapshot`` blocks hold these)."""
        return range(self.layouts[0].lo, self.layouts[0].hi)

    def options(self) -> dict[str, Any]:
        return {
            "nt": int(self.grids[0].numel()),
            "levels": self.num_levels,
            "cf": self.cf,
            "relax": "F" if self.cf_iter == 0 else ("FCF" if self.cf_iter == 1 else f"F(CF)^{self.cf_iter}"),
            "weight_c": self.weight_c,
            "cycle": self.cycle,
            "nested": self.nested,
            "tol": self.tol,
            "rtol": self.rtol,
            "max_iter": self.max_iter,
            "coarse_storage": self.coarse_storage,
            "run_ahead": self.run_ahead,
            "replay": self.replay,
            "halo_images": self.halo_images,
            "nproc": self.comm.size,
        }

    # ------------------------------------------------------------------ set-up
    def _setup(self, u0: State, timer: PhaseTimer) -> list[Level]:
        levels = []
        last = len(self.layouts) - 1
        for lvl, layout in enumerate(self.layouts):
            c_only = self.coarse_storage == "c" and 0 < lvl < last
            level = Level(lvl, layout, self.problems[lvl], self.comm, timer, template=u0, c_only=c_only,
                          halo_images=self.halo_images)
            # A C-points-only level stores what the next coarser level owns on this rank.
            stored = self.layouts[lvl + 1].n_local if c_only else layout.n_local
            if lvl > 0 and not c_only:
                # A level that keeps all its points is the finer level's C-points: its u is a view
                # of them, so the injection and the correction (u_C = u_c) cost no copy.  The finer
                # level's C-points are not read or written while this level is solved.
                level.u = c_values(levels[-1])
                level.alias = True
            else:
                level.u = tree_map(torch.zeros_like, expand(u0, stored))
            if layout.lo == 0 and layout.n_local > 0:
                put(level.u, 0, u0)
            if lvl > 0:
                level.g = tree_map(torch.zeros_like, expand(u0, layout.n_local))
            levels.append(level)
        return levels

    # ------------------------------------------------------------------ cycles
    def _cycle(
        self, levels: list[Level], lvl: int, cycle: str, first_f: bool, cached: Cached | None = None
    ) -> None:
        """One cycle from level ``lvl``.

        ``cached``: ``Phi(u_{c-1})`` at the C-points for the level's current ``u`` (the finest
        level's convergence check computed them). Without a leading F-relaxation ``u`` is
        unchanged, so the first C-relaxation (or, with F-relaxation only, the restriction's
        residual) reuses them: one sweep of steps and one halo message fewer per iteration.
        """
        level = levels[lvl]
        if lvl == len(levels) - 1:
            sequential_solve(level)
            return
        if first_f:
            f_relax(level)
            cached = None
        for _ in range(self.cf_iter):
            c_relax(level, self.weight_c, cached)
            cached = None
            f_relax(level)
        restrict(level, levels[lvl + 1], cached)
        self._cycle(levels, lvl + 1, cycle, first_f=True)
        correct(level, levels[lvl + 1])
        f_relax(level)
        if lvl != 0 and cycle == "F":
            self._cycle(levels, lvl, "V", first_f=False)

    def _iteration(
        self, levels: list[Level], timer: PhaseTimer, first_f: bool, cached: Cached | None
    ) -> tuple[torch.Tensor, Cached]:
        """One cycle from the finest level, then this rank's part of the residual (see :meth:`_residual_part`)."""
        self._cycle(levels, 0, self.cycle, first_f=first_f, cached=cached)
        with timer.phase("residual"):
            return self._residual_part(levels[0])

    def _record(
        self, levels: list[Level], timer: PhaseTimer, cached: Cached | None
    ) -> tuple[torch.Tensor, Cached, Plan | None]:
        """A steady iteration (no leading F-relaxation), recorded for replay: its results and its plan (None if refused)."""
        recorder = IterationRecorder(timer)
        before = [level.steps_taken for level in levels]
        for level in levels:
            level.recorder = recorder
        try:
            with recorder:
                local, cached = self._iteration(levels, timer, False, cached)
        finally:
            for level in levels:
                level.recorder = None
        try:
            plan = recorder.plan([level.steps_taken - b for level, b in zip(levels, before)])
        except Refused:
            plan = None
        return local, cached, plan

    def _nested_iteration(self, levels: list[Level]) -> None:
        """Solve the coarsest level, then inject upwards with a V-cycle on each coarse level."""
        sequential_solve(levels[-1])
        for lvl in range(len(levels) - 2, -1, -1):
            correct(levels[lvl], levels[lvl + 1])  # injection of the coarse solution
            if lvl > 0:
                self._cycle(levels, lvl, "V", first_f=True)

    def _residual_norm(self, finest: Level) -> tuple[float, Cached]:
        """The space-time residual norm, and the C-point images it was computed from."""
        local, cached = self._residual_part(finest)
        return math.sqrt(float(self.comm.sum(local))), cached

    def _residual_part(self, finest: Level) -> tuple[torch.Tensor, Cached]:
        """This rank's part of the squared residual norm, and the C-point images it was computed from."""
        assert finest.u is not None
        # In scratch storage: the same temporaries every iteration (the images stay valid for
        # the next cycle, which reads them before the next residual check).
        cached = Cached(c_images(finest, scratch="residual images"))
        residual = c_residual(finest, cached, scratch="residual")
        local = torch.zeros((), dtype=torch.float64)
        if residual is not None:
            local = batch_sq_norms(residual[1], overwrite=True).sum()
        return local, cached

    def _not_last(self, local: torch.Tensor, residuals: list[float]) -> bool:
        """Whether this rank's part alone shows the iteration is not converged (never for NaN).

        The total adds non-negative parts, and adding a non-negative number never gives less than
        what it is added to, after rounding too (rounding is monotone), so ``sqrt(total) >=
        sqrt(part)``: a part at or above the tolerance decides alike on every rank.
        """
        part = math.sqrt(float(local))
        if not part >= self.tol:
            return False
        if self.rtol > 0:
            return bool(residuals) and part >= self.rtol * residuals[0]
        return True

    # ------------------------------------------------------------------ solve
    def solve(
        self,
        u0: State | None = None,
        *,
        guess: State | None = None,
        done: Sequence[float] = (),
        snapshot: Callable[[int, State], None] | None = None,
    ) -> SolveResult:
        """Run MGRIT from ``u0`` (default: ``problem.initial_value()``).

        Args:
            guess: this rank's block of the finest level (the points :attr:`owned`, stacked)
                to start from instead of ``u0`` then zeros; nested iteration is skipped.
            done: with ``guess``, the residual history of the iterations that produced it: the
                solve continues at iteration ``len(done) + 1`` exactly as the uninterrupted
                solve would have (no leading F-relaxation, ``rtol`` against ``done[0]``), so a
                solve resumed from a snapshot gives the same residuals and solution.
            snapshot: called on every rank after each iteration (after ``callback``) with the
                iteration and this rank's block of the finest level (a view: copy what you keep).
        """
        if u0 is None:
            initial = getattr(self.problems[0], "initial_value", None)
            if initial is None:
                raise ConfigError("no u0 given and the problem has no initial_value()")
            u0 = initial()
        if done and guess is None:
            raise ConfigError("continuing a solve (done) needs the trajectory it reached (guess)")
        timer = PhaseTimer()
        start = time.perf_counter()
        levels = self._setup(u0, timer)
        if guess is not None:
            self._use_guess(levels[0], guess)
        elif self.nested and self.num_levels > 1:
            with timer.phase("nested"):
                self._nested_iteration(levels)
        setup_seconds = time.perf_counter() - start

        residuals: list[float] = [float(r) for r in done]
        converged = bool(residuals) and self._converged(residuals)
        start = time.perf_counter()
        cached: Cached | None = None
        if residuals and not converged:
            # The uninterrupted solve enters the next cycle with the C-point images of its
            # residual check; recomputing them (the same sweep) keeps the iteration identical.
            with timer.phase("residual"):
                _, cached = self._residual_norm(levels[0])
            self.comm.wait_sends()
        # Rank 0 is the one rank that waits for nobody within an iteration, so it alone may run
        # ahead of the sum (a later rank that did could wait forever for a halo from a rank that
        # has stopped on a non-finite residual).  While a sum is open it waits for nothing else
        # (its sends are only pushed), and it is never more than _OPEN_SUMS sums ahead: every
        # other rank posts its part before it can stop, so waiting for a sum always ends.
        ahead = self.run_ahead and snapshot is None and self.comm.rank == 0 and self.comm.size > 1
        open_sums: deque[tuple[int, PendingSum]] = deque()  # (iteration, its sum over ranks), oldest first
        # (a comm of the user's own may have only the blocking sum)
        isum = getattr(self.comm, "isum", None) or (lambda value: CompletedSum(self.comm.sum(value)))

        def collect(block: bool) -> None:
            """Take in the sums that have arrived (all of them if ``block``), in iteration order."""
            while open_sums and (block or open_sums[0][1].done()):
                iteration, pending = open_sums.popleft()
                norm = math.sqrt(float(pending.wait()))
                if not math.isfinite(norm):
                    raise NonFiniteError(iteration)
                residuals.append(norm)
                factor = norm / residuals[-2] if len(residuals) > 1 and residuals[-2] > 0 else None
                if self.callback is not None:
                    self.callback(iteration, norm, factor)
                if snapshot is not None:
                    assert levels[0].u is not None
                    snapshot(iteration, levels[0].u)

        # From the second iteration on every iteration does the same: the first of them is
        # recorded, the later ones replay it (the same storage, so the same local and cached).
        record = self.replay
        plan: Plan | None = None
        for iteration in range(len(residuals) + 1, self.max_iter + 1):
            if converged:
                break
            if plan is not None:
                plan.replay(timer, levels)
            elif record and iteration > 1:
                record = False
                local, cached, plan = self._record(levels, timer, cached)
            else:
                local, cached = self._iteration(levels, timer, iteration == 1, cached)
            with timer.phase("residual"):
                # (a copy: the next replay overwrites local while this sum may still be open)
                open_sums.append((iteration, isum(local.clone())))
                collect(block=not (ahead and len(open_sums) <= _OPEN_SUMS and self._not_last(local, residuals)))
            if open_sums:
                self.comm.wait_sends(block=False)
            else:  # every message of the iteration has been received by now: release the send handles
                self.comm.wait_sends()
            # With a sum still open this iteration is known not to be the last.
            converged = not open_sums and self._converged(residuals)
        with timer.phase("residual"):
            collect(block=True)  # (max_iter reached while running ahead)
        solve_seconds = time.perf_counter() - start

        t, u = self._collect(levels[0])
        return SolveResult(
            t=t,
            u=u,
            residuals=residuals,
            iterations=len(residuals),
            converged=converged,
            setup_seconds=setup_seconds,
            solve_seconds=solve_seconds,
            phase_seconds=timer.as_dict(),
            steps_per_level=[level.steps_taken for level in levels],
            states_per_level=[level.stored_states() for level in levels],
            options=self.options(),
        )

    def _converged(self, residuals: list[float]) -> bool:
        norm = residuals[-1]
        return norm < self.tol or (self.rtol > 0 and norm < self.rtol * residuals[0])

    def _use_guess(self, finest: Level, guess: State) -> None:
        expected = finest.layout.n_local
        if length(guess) != expected:
            raise ConfigError(
                f"the initial guess holds {length(guess)} points, this rank owns {expected} "
                f"(points {finest.layout.lo}..{finest.layout.hi - 1})"
            )
        # In place: the coarse levels' u are views of the finest level's C-points.
        tree_map(lambda u, g: u.copy_(g.to(dtype=u.dtype, device=u.device)), finest.u, guess)

    # ------------------------------------------------------------------ output
    def _collect(self, finest: Level) -> tuple[torch.Tensor, State]:
        layout = finest.layout
        assert finest.u is not None
        if self.store == "c" and layout.m is not None:
            where = c_slice(finest)
            local_t = layout.t[layout.lo : layout.hi][where]
            local_u = take(finest.u, where)
        else:
            local_t = layout.t[layout.lo : layout.hi]
            local_u = finest.u
        if not self.gather or self.comm.size == 1:
            return local_t, local_u
        times = torch.cat(self.comm.all_gather_sizes(local_t))
        chunks = self.comm.all_gather_sizes(flatten(local_u))
        template = finest.template
        counts = [len(self._stored_indices(rank)) for rank in range(self.comm.size)]
        parts = [unflatten(c, expand(template, n)) for c, n in zip(chunks, counts) if n > 0]
        return times, tree_map(lambda *xs: torch.cat(xs), *parts)

    def _stored_indices(self, rank: int) -> range:
        lo, hi = self.layouts[0].ranges[rank]
        m = self.layouts[0].m
        if self.store == "c" and m is not None:
            return range(-(-lo // m) * m, hi, m)
        return range(lo, hi)


def sequential_pass(
    problem: Problem,
    t: torch.Tensor | Sequence[float],
    u0: State,
    *,
    comm: Comm | None = None,
    partition: Sequence[tuple[int, int]] | None = None,
) -> SolveResult:
    """Step through the grid once, point after point, pipelined over the ranks: the exact solution.

    What MGRIT does on its coarsest level, as a solve of its own; ``MGRIT(levels=1)`` would add
    a residual check, i.e. a second pass.  The result holds this rank's block only (the points
    of ``partition[rank]``, default balanced blocks), ``iterations`` 1 and no residuals.
    """
    comm = comm if comm is not None else default_comm()
    start = time.perf_counter()
    grid = torch.as_tensor(t, dtype=torch.float64)
    timer = PhaseTimer()
    (layout,) = layouts(coarsen(grid, [], 1), [], comm.rank, comm.size, list(partition) if partition else None)
    level = Level(0, layout, problem, comm, timer, template=u0)
    level.u = tree_map(torch.zeros_like, expand(u0, layout.n_local))
    if layout.lo == 0 and layout.n_local > 0:
        put(level.u, 0, u0)
    sequential_solve(level)
    comm.wait_sends()
    return SolveResult(
        t=layout.t[layout.lo : layout.hi],
        u=level.u,
        residuals=[],
        iterations=1,
        converged=True,
        setup_seconds=0.0,
        solve_seconds=time.perf_counter() - start,
        phase_seconds=timer.as_dict(),
        steps_per_level=[level.steps_taken],
        states_per_level=[level.stored_states()],
        options={"nt": layout.n, "levels": 1, "nproc": comm.size},
    )
