"""The 1-D heat equation exactly as PyMGRIT's ``Heat1D`` discretises it.

``u_t = a u_xx + f(x, t)`` on ``[x_start, x_end]`` with homogeneous Dirichlet boundaries;
``nx`` grid points including the two boundary points (the state holds the ``nx - 2``
interior values); second-order central differences in space; backward Euler in time:

    (I + dt * K) u_{n+1} = u_n + dt * f(x, t_{n+1}),   K = a / dx^2 * tridiag(-1, 2, -1).

Speed: the tridiagonal matrix ``I + dt K`` depends only on ``dt``, so its LDL^T factorisation
(LAPACK ``pttrf``) is computed once per distinct ``dt``.  On CPU in float64 a batched step
solves all right-hand sides with :func:`torchpint.problems.tridiagonal.solve_rows`, which
vectorises every row operation across the batch, forms ``u + dt f`` inside its first sweep and
writes into the caller's storage (``step_batch_into``); it gives bitwise the result of
LAPACK's ``pttrs`` (``solver="lapack"``, also the fallback without numba), about 4x faster
(docs/engine.md).  Other devices and dtypes use a cached dense LU (``torch.linalg.lu_factor``),
which is what a GPU is good at.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.linalg import lapack

from torchpint.engine.problem import BatchedProblem
from torchpint.problems import tridiagonal

Source = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
InitialCondition = Callable[[torch.Tensor], torch.Tensor]
SOLVERS = ("auto", "rows", "lapack")
# Cached batch preparations (Heat1D._prepared); an MGRIT solve uses a few dozen.
_MAX_BATCHES = 1024


class SeparableSource:
    """A source ``f(x, t) = space(x) * time(t)``; callable as any ``f(x, t)``.

    Knowing the factors lets the batched solve form ``f`` inside its sweep (one product per
    entry, the same rounding as calling it) instead of materialising a ``(batch, n)`` array.
    """

    def __init__(self, space: Callable[[torch.Tensor], torch.Tensor], time: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.space = space
        self.time = time

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.space(x) * self.time(t)


def _numpy(t: torch.Tensor) -> np.ndarray:
    """The tensor's memory as a numpy array, for the kernels to read and write (no copy).

    ``numpy()`` first: one call instead of ``detach().numpy()``'s two, on a path taken some 30
    times per MGRIT iteration; only a tensor that requires grad needs the detach.
    """
    try:
        return t.numpy()
    except RuntimeError:
        return t.detach().numpy()


def default_rhs(a: float = 1.0) -> SeparableSource:
    """``f(x, t) = -sin(pi x) (sin t - a pi^2 cos t)``: exact solution ``sin(pi x) cos t``."""
    return SeparableSource(
        lambda x: -torch.sin(math.pi * x),
        lambda t: torch.sin(t) - a * math.pi**2 * torch.cos(t),
    )


class Heat1D(BatchedProblem):
    """Backward-Euler heat equation; see the module docstring.

    Args:
        x_start, x_end: the spatial interval.
        nx: number of grid points, both boundary points included (>= 3).
        a: thermal conductivity.
        init_cond: ``u(x, t_start)`` from the interior points ``x`` (default 0).
        rhs: ``f(x, t)``; called with ``x`` of shape ``(1, nx-2)`` and ``t`` of shape
            ``(batch, 1)`` and must broadcast to ``(batch, nx-2)`` (default 0).  A
            :class:`SeparableSource` is evaluated factor by factor.
        solver: the CPU float64 batched solve: ``"rows"`` (row operations vectorised across the
            batch, needs numba), ``"lapack"`` (``pttrs``, one right-hand side at a time), or
            ``"auto"`` (``"rows"`` when numba is installed); the two agree bitwise.
    """

    def __init__(
        self,
        x_start: float = 0.0,
        x_end: float = 2.0,
        nx: int = 1025,
        a: float = 1.0,
        init_cond: InitialCondition | None = None,
        rhs: Source | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
        solver: str = "auto",
    ) -> None:
        if nx < 3:
            raise ValueError(f"nx must be >= 3 (it counts both boundary points), got {nx}")
        if not x_end > x_start:
            raise ValueError(f"x_end ({x_end}) must be greater than x_start ({x_start})")
        if not a > 0:
            raise ValueError(f"the thermal conductivity a must be > 0, got {a}")
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}: use one of {', '.join(SOLVERS)}")
        if solver == "rows" and not tridiagonal.AVAILABLE:
            raise ValueError("solver='rows' needs numba (pip install numba); use 'lapack'")
        grid = np.linspace(x_start, x_end, nx)[1:-1]
        self.device = torch.device(device)
        self.dtype = dtype
        self.x = torch.from_numpy(grid).to(self.device, dtype)
        self.n = nx - 2
        self.dx = float(grid[1] - grid[0]) if self.n > 1 else float((x_end - x_start) / 2)
        self.a = float(a)
        self.fac = self.a / self.dx**2
        self.init_cond = init_cond
        self.rhs = rhs
        cpu64 = self.device.type == "cpu" and dtype == torch.float64
        if not cpu64:
            self.solver = "dense"
        elif solver == "auto":
            self.solver = "rows" if tridiagonal.AVAILABLE else "lapack"
        else:
            self.solver = solver
        self._factors: dict[float, tuple] = {}
        self._batches: dict[tuple[int, int], tuple] = {}  # see _prepared
        # The space factor of a separable source, evaluated once (as the full call would).
        self._space = rhs.space(self.x.unsqueeze(0)).reshape(self.n).numpy() if (
            isinstance(rhs, SeparableSource) and self.solver == "rows") else None

    def initial_value(self) -> torch.Tensor:
        if self.init_cond is None:
            return torch.zeros(self.n, dtype=self.dtype, device=self.device)
        return self.init_cond(self.x).to(self.device, self.dtype).reshape(self.n)

    # ---------------------------------------------------------------- the linear solve
    def _factor(self, dt: float) -> tuple:
        """The factors of ``I + dt K`` (cached per distinct dt): LDL^T on CPU float64, else LU."""
        cached = self._factors.get(dt)
        if cached is not None:
            return cached
        diag = np.full(self.n, dt * (2 * self.fac) + 1.0)
        off = np.full(self.n - 1, dt * -self.fac)
        if self.solver != "dense":
            # I + dt K is symmetric positive definite: LDL^T (pttrf) solves twice as fast as LU.
            d, e, info = lapack.dpttrf(diag, off)
            if info != 0:
                raise ArithmeticError(f"the heat-equation matrix is not positive definite for dt={dt}")
            cached = (d, e)
        else:
            dense = torch.diag(torch.from_numpy(diag))
            dense += torch.diag(torch.from_numpy(off), 1) + torch.diag(torch.from_numpy(off), -1)
            cached = torch.linalg.lu_factor(dense.to(self.device, self.dtype))
        self._factors[dt] = cached
        return cached

    def _solve(self, dt: float, b: torch.Tensor) -> torch.Tensor:
        """Solve ``(I + dt K) x = b`` for every row of ``b`` (shape ``(batch, n)``): pttrs or LU."""
        if self.solver == "dense":
            lu, piv = self._factor(dt)
            return torch.linalg.lu_solve(lu, piv, b.T).T
        # A C-contiguous (batch, n) array is an F-contiguous (n, batch) one: no copy.
        rhs = b.contiguous().numpy().T
        x, info = lapack.dpttrs(*self._factor(dt), rhs, overwrite_b=1)
        if info != 0:
            raise ArithmeticError(f"LAPACK pttrs failed (info={info})")
        return torch.from_numpy(np.ascontiguousarray(x.T))

    def _source(self, t: torch.Tensor) -> torch.Tensor | None:
        if self.rhs is None:
            return None
        return self.rhs(self.x.unsqueeze(0), t.to(self.device, self.dtype).unsqueeze(1))

    @staticmethod
    def _dt_groups(dt: torch.Tensor) -> list[tuple[float, torch.Tensor | None]]:
        """The distinct step sizes and the batch rows of each (None: every row)."""
        dts = dt.tolist()
        first = dts[0]
        if dts.count(first) == len(dts):
            return [(first, None)]
        # Rounded grids give a few distinct dt: solve each group with its own exact matrix.
        return [(d, torch.nonzero(dt == d).squeeze(1)) for d in sorted(set(dts))]

    # ---------------------------------------------------------------- the contract
    def step_batch(self, u: torch.Tensor, t_start: torch.Tensor, t_stop: torch.Tensor) -> torch.Tensor:
        if self.solver == "rows":
            out = torch.empty(u.shape, dtype=u.dtype, device=u.device)
            self.step_batch_into(u, t_start, t_stop, out)
            return out
        dt = t_stop - t_start
        source = self._source(t_stop)
        b = u.clone() if source is None else u + source * dt.to(u.dtype).unsqueeze(1)
        groups = self._dt_groups(dt)
        if len(groups) == 1:
            return self._solve(groups[0][0], b)
        out = torch.empty_like(b)
        for d, rows in groups:
            out[rows] = self._solve(d, b[rows])
        return out

    def step_batch_into(
        self, u: torch.Tensor, t_start: torch.Tensor, t_stop: torch.Tensor, out: torch.Tensor, g: torch.Tensor | None = None
    ) -> None:
        """``out[:] = step_batch(u, t_start, t_stop) (+ g)`` without intermediate arrays (``out`` may be a view).

        ``g`` (the engine's FAS right-hand side) is added as the kernel writes the solution:
        bitwise ``out.add_(g)`` afterwards, without another pass over memory.
        """
        if self.solver != "rows":
            out.copy_(self.step_batch(u, t_start, t_stop))
            if g is not None:
                out.add_(g)
            return
        dt_np, groups, args = self._prepared(t_start, t_stop)
        u_np, out_np = _numpy(u), _numpy(out)
        g_np = None if g is None else _numpy(g)
        for index, d, e in groups:
            tridiagonal.solve_rows(u_np, dt_np, index, d, e, out_np, g=g_np, **args)

    def step_sequence_into(
        self, u: torch.Tensor, t_start: torch.Tensor, t_stop: torch.Tensor, out: torch.Tensor, g: torch.Tensor | None = None
    ) -> None:
        """Consecutive steps from one state: ``out[k] = step(out[k-1], t_start[k], t_stop[k]) (+ g[k])``, ``out[-1] = u``.

        The engine's sequential (coarsest-level) solve in one call of the compiled chain kernel
        when every step has the same size (else, or without numba, one batched step per point).
        """
        if self.solver == "rows":
            dt_np, groups, args = self._prepared(t_start, t_stop)
            if len(groups) == 1:
                _, d, e = groups[0]
                g_np = None if g is None else _numpy(g)
                tridiagonal.solve_chain(_numpy(u), dt_np, d, e, _numpy(out), g_np, **args)
                return
        for k in range(len(t_start)):
            src = u.unsqueeze(0) if k == 0 else out[k - 1 : k]
            self.step_batch_into(src, t_start[k : k + 1], t_stop[k : k + 1], out[k : k + 1])
            if g is not None:
                out[k].add_(g[k])

    def step_intervals_into(self, u: torch.Tensor, t: torch.Tensor, m: int, g: torch.Tensor | None = None) -> bool:
        """The F-relaxation of a run of C-intervals in place (the engine's contract), in one kernel call.

        Each interval's state stays in the kernel's tile between its steps, so the F-points are
        neither re-read nor the right-hand side formed in a separate pass: about two thirds of the
        time of one batched step per offset (``bench_engine.py --kernel``), bitwise the same.  Only for one step size: a grid whose F-steps
        differ in their last bits (``linspace`` rounding) returns False, and the engine steps
        offset by offset (each offset then groups its rows by step size).
        """
        if self.solver != "rows":
            return False
        prepared = self._run_prepared(t, m)
        if prepared is None:
            return False
        dt, d, e, args = prepared
        tridiagonal.solve_intervals(_numpy(u), dt, d, e, m, len(t), None if g is None else _numpy(g), **args)
        return True

    def _run_prepared(self, t: torch.Tensor, m: int) -> tuple | None:
        """What :meth:`step_intervals_into` needs for the points at times ``t``; None if its steps differ in size.

        Cached per tensor as :meth:`_prepared` (the engine hands over the same ``t`` every iteration).
        """
        key = (id(t), -m)  # negative: never a key of _prepared's (two tensor ids)
        hit = self._batches.get(key)
        if hit is not None and hit[0] is t and hit[2] == t._version:
            return hit[3]
        steps = torch.arange(1, len(t))
        steps = steps[steps % m != 0]  # the F-points: the steps taken (into a C-point: none)
        dts = t[steps] - t[steps - 1]  # as t_stop - t_start of the per-offset batches
        prepared = None
        if len(dts) > 0 and bool((dts == dts[0]).all()):
            dt = float(dts[0])
            args: dict[str, np.ndarray] = {}
            if self._space is not None:
                args = {"space": self._space, "time": self.rhs.time(t.unsqueeze(1)).reshape(-1).numpy()}  # type: ignore[union-attr]
            elif self.rhs is not None:
                args = {"source": self._source(t).expand(len(t), self.n).numpy()}  # type: ignore[union-attr]
            prepared = (dt, *self._factor(dt), args)
        if len(self._batches) >= _MAX_BATCHES:
            self._batches.clear()
        self._batches[key] = (t, None, t._version, prepared)
        return prepared

    def _prepared(self, t_start: torch.Tensor, t_stop: torch.Tensor) -> tuple:
        """What a batch's step needs besides the states: ``dt``, the rows and factors per step size, the source.

        The engine steps the same batches every iteration and hands over the same time tensors
        (it caches its slices of the grid), so this is cached per pair of tensors: forming it
        costs a dozen small torch ops (``dt``, the source's ``sin``/``cos``, the grouping),
        about as much as the whole solve of a small batch.  An entry holds the tensors (so
        their ids cannot be reused by others) and their version counters (an in-place change
        of the grid is noticed).
        """
        key = (id(t_start), id(t_stop))
        hit = self._batches.get(key)
        if hit is not None and hit[0] is t_start and hit[1] is t_stop and hit[2] == (t_start._version, t_stop._version):
            return hit[3]
        dt = t_stop - t_start
        args: dict[str, np.ndarray] = {}
        if self._space is not None:
            args = {"space": self._space, "time": self.rhs.time(t_stop.unsqueeze(1)).reshape(-1).numpy()}  # type: ignore[union-attr]
        elif self.rhs is not None:
            args = {"source": self._source(t_stop).expand(len(t_stop), self.n).numpy()}  # type: ignore[union-attr]
        groups = [
            (np.arange(len(dt)) if rows is None else rows.numpy(), *self._factor(d)) for d, rows in self._dt_groups(dt)
        ]
        prepared = (dt.numpy(), groups, args)
        if len(self._batches) >= _MAX_BATCHES:  # callers that never repeat a batch: stay bounded
            self._batches.clear()
        self._batches[key] = (t_start, t_stop, (t_start._version, t_stop._version), prepared)
        return prepared
