"""One symmetric positive definite tridiagonal matrix, many right-hand sides: the LDL^T solve.

``A = L D L^T`` (LAPACK ``pttrf``: ``d`` the diagonal of ``D``, ``e`` the subdiagonal of the
unit bidiagonal ``L``) is factorised once per matrix; a solve is then two sweeps,

    forward   y_0 = b_0,            y_i = b_i - y_{i-1} e_{i-1}
    backward  x_{n-1} = y_{n-1}/d_{n-1},  x_i = y_i / d_i - x_{i+1} e_i,

each a chain of dependent operations: solving one right-hand side at a time (LAPACK's
``pttrs`` does that for every column) waits on the latency of every multiply and divide.
:func:`solve_rows` instead runs each row operation across a tile of :data:`TILE`
right-hand sides at once, in the columns of a scratch block ``(n, TILE)`` whose rows are
contiguous, so the independent chains fill the vector units: the forward sweep forms each
right-hand side (``b = u + dt * f``, optionally with a separable source ``f[j, i] = space[i] *
time[j]``) as it reaches its row, reading row ``i`` of the tile's states side by side (no
separate pass to gather them), the backward sweep runs on the block, and the solutions are
written back row by row.  The
operations and their order are exactly ``pttrs``'s, so the result is bitwise the same.

The engine's stacked states are read where they are (strided views) and the solution is
written straight into the caller's ``out`` (e.g. a strided view of a trajectory): no copies
or conversions around the solve.

The kernel is compiled by numba (LLVM, shipped in its wheel: no compiler needed) on first use
and cached on disk; without numba, :data:`AVAILABLE` is False and callers use ``pttrs``.
"""

from __future__ import annotations

import numpy as np

try:  # numba is a dependency, but the solve must still work (more slowly) without it
    import numba

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only in an environment without numba
    numba = None
    AVAILABLE = False

# Right-hand sides per tile: 16 float64 are two AVX-512 registers, two independent chains per
# row operation; measured against 8 and 32 for nx 257 and 2049 (docs/engine.md).
TILE = 16

NO_SOURCE, FULL_SOURCE, SEPARABLE_SOURCE = 0, 1, 2


def _backward_sweep(w, d, e, cols):  # pragma: no cover - compiled
    # x_{n-1} = y_{n-1}/d_{n-1}, x_i = y_i/d_i - x_{i+1} e_i on the first `cols` columns of w, in place
    n = w.shape[0]
    dn = d[n - 1]
    for j in range(cols):
        w[n - 1, j] = w[n - 1, j] / dn
    for i in range(n - 2, -1, -1):
        di = d[i]
        ei = e[i]
        for j in range(cols):
            w[i, j] = w[i, j] / di - w[i + 1, j] * ei


def _solve_rows(u, source, space, time, dts, rows, d, e, g, out, mode):  # pragma: no cover - compiled
    n = u.shape[1]
    count = rows.shape[0]
    if count == 1:
        # One right-hand side (the engine's halo images, the coarsest levels): the tile's
        # column layout would cost a strided access per row for nothing; the same operations
        # on a contiguous vector (as _solve_chain), so bitwise the same result.
        _solve_one(u, rows[0], source, space, time, dts, rows[0], d, e, g, out, mode)
        return
    w = np.empty((n, TILE))
    tm = np.zeros(TILE)
    dt = np.zeros(TILE)
    rr = np.zeros(TILE, dtype=np.int64)
    for j0 in range(0, count, TILE):
        t = min(TILE, count - j0)
        for j in range(t):
            rr[j] = rows[j0 + j]
            dt[j] = dts[rr[j]]
            if mode == SEPARABLE_SOURCE:
                tm[j] = time[rr[j]]
        # Forward sweep, each right-hand side b = u + (f * dt) (the same rounding as in torch)
        # formed as the sweep reaches its row: the tile's states are read once, row i of all
        # of them side by side, and the dependent chains run across the columns of w with no
        # separate pass to gather them (row 0 stays b: pttrs's b - 0 * 0).  Then backward.
        for i in range(n):
            ei = e[i - 1] if i > 0 else 0.0
            for j in range(t):
                if mode == NO_SOURCE:
                    b = u[rr[j], i]
                elif mode == FULL_SOURCE:
                    b = u[rr[j], i] + source[rr[j], i] * dt[j]
                else:
                    b = u[rr[j], i] + (space[i] * tm[j]) * dt[j]
                w[i, j] = b - w[i - 1, j] * ei if i > 0 else b
        _backward_sweep(w, d, e, t)
        # the solutions back, row by row (contiguous writes; the tile's rows were all read above),
        # plus g if given: one rounding of x + g, as torch's add_ after the solve would give
        if g.shape[0] > 0:
            for j in range(t):
                r = rows[j0 + j]
                for i in range(n):
                    out[r, i] = w[i, j] + g[r, i]
        else:
            for j in range(t):
                r = rows[j0 + j]
                for i in range(n):
                    out[r, i] = w[i, j]


def _solve_one(u, ri, source, space, time, dts, r, d, e, g, out, mode):  # pragma: no cover - compiled
    # _solve_rows for one right-hand side, from the state u[ri], written to out[r] (step size,
    # source and g of index r): b formed and swept forward in one pass, then the backward sweep
    # straight into out[r] (u[ri] was read completely before: it may be out[r]).
    n = u.shape[1]
    w = np.empty(n)
    dt = dts[r]
    for i in range(n):
        if mode == NO_SOURCE:
            b = u[ri, i]
        elif mode == FULL_SOURCE:
            b = u[ri, i] + source[r, i] * dt
        else:
            b = u[ri, i] + (space[i] * time[r]) * dt
        w[i] = b - w[i - 1] * e[i - 1] if i > 0 else b
    x = w[n - 1] / d[n - 1]
    w[n - 1] = x
    for i in range(n - 2, -1, -1):
        x = w[i] / d[i] - w[i + 1] * e[i]
        w[i] = x
    if g.shape[0] > 0:
        for i in range(n):
            out[r, i] = w[i] + g[r, i]
    else:
        for i in range(n):
            out[r, i] = w[i]


def _solve_intervals(u, source, space, time, dt, d, e, g, m, npts, mode):  # pragma: no cover - compiled
    # u[0:npts] is a run of C-intervals: point k*m is interval k's first (C-)point, the next m-1
    # its F-points.  Every F-point p is stepped in place from the point before it,
    # u[p] = A^{-1} (u[p-1] + dt f[p]) (+ g[p]), f[p] = source[p] or space * time[p], one step
    # size dt (A = L D L^T from d, e): the F-relaxation of all intervals in one call.  Tiles of
    # TILE intervals as in _solve_rows: the C-points are read once into the columns of w, then
    # each step's solution stays in w as the next step's input (no re-reading of the states
    # just written), and b = u + (f * dt) is formed as the forward sweep reaches each row.  The
    # last interval may end early (npts not a multiple of m): its missing points are neither
    # read nor written.  Exactly the operations of _solve_rows on the points of one offset at
    # a time, so bitwise the same.
    n = u.shape[1]
    count = (npts + m - 1) // m
    w = np.empty((n, TILE))
    tm = np.zeros(TILE)
    for k0 in range(0, count, TILE):
        t = min(TILE, count - k0)
        for j in range(t):
            c = (k0 + j) * m
            for i in range(n):
                w[i, j] = u[c, i]
        for s in range(1, m):
            live = 0  # columns whose interval has a point at offset s (the last may not)
            for j in range(t):
                if (k0 + j) * m + s < npts:
                    live = j + 1
                    if mode == SEPARABLE_SOURCE:
                        tm[j] = time[(k0 + j) * m + s]
            if live == 0:
                break
            for i in range(n):
                ei = e[i - 1] if i > 0 else 0.0
                for j in range(live):
                    if mode == NO_SOURCE:
                        b = w[i, j]
                    elif mode == FULL_SOURCE:
                        b = w[i, j] + source[(k0 + j) * m + s, i] * dt
                    else:
                        b = w[i, j] + (space[i] * tm[j]) * dt
                    w[i, j] = b - w[i - 1, j] * ei if i > 0 else b
            _backward_sweep(w, d, e, live)
            if g.shape[0] > 0:
                for j in range(live):
                    p = (k0 + j) * m + s
                    for i in range(n):
                        v = w[i, j] + g[p, i]
                        u[p, i] = v
                        w[i, j] = v
            else:
                for j in range(live):
                    p = (k0 + j) * m + s
                    for i in range(n):
                        u[p, i] = w[i, j]


def _solve_chain(u0, source, space, time, dts, d, e, g, out, mode):  # pragma: no cover - compiled
    # out[k] = A^{-1} (out[k-1] + dts[k] f[k]) + g[k], out[-1] = u0: one right-hand side at a
    # time (each is the previous solution) by _solve_one, the kernel of a batch of one, so every
    # point is bitwise what a batch of one would give; g[k] is added as torch's add_ does (one
    # rounding), the next point starting from the sum.
    if out.shape[0] == 0:
        return
    out[0, :] = u0  # the first step in place from there
    _solve_one(out, 0, source, space, time, dts, 0, d, e, g, out, mode)
    for k in range(1, out.shape[0]):
        _solve_one(out, k - 1, source, space, time, dts, k, d, e, g, out, mode)


if AVAILABLE:
    # (inlined into its callers, which are compiled after it)
    _backward_sweep = numba.njit(cache=True, boundscheck=False, nogil=True, inline="always")(_backward_sweep)
    _solve_one = numba.njit(cache=True, boundscheck=False, nogil=True)(_solve_one)
    _solve_rows = numba.njit(cache=True, boundscheck=False, nogil=True)(_solve_rows)
    _solve_chain = numba.njit(cache=True, boundscheck=False, nogil=True)(_solve_chain)
    _solve_intervals = numba.njit(cache=True, boundscheck=False, nogil=True)(_solve_intervals)

_EMPTY_2D = np.empty((0, 0))
_EMPTY_1D = np.empty(0)


def solve_rows(
    u: np.ndarray,
    dts: np.ndarray,
    rows: np.ndarray,
    d: np.ndarray,
    e: np.ndarray,
    out: np.ndarray,
    source: np.ndarray | None = None,
    space: np.ndarray | None = None,
    time: np.ndarray | None = None,
    g: np.ndarray | None = None,
) -> None:
    """``out[r] = A^{-1} (u[r] + dts[r] * f[r]) (+ g[r])`` for every ``r`` in ``rows`` (``A = L D L^T``).

    ``u``, ``out``: ``(batch, n)`` float64, any strides (``out`` may be ``u``: each row is read
    completely before it is written).  ``f`` is ``source`` (``(batch, n)``), or ``space[i] *
    time[r]`` (``(n,)`` and ``(batch,)``), or absent (then ``b = u``).  ``g``: ``(batch, n)``,
    added as the solution is written (bitwise ``out.add_(g)`` after the solve, without a
    second pass over ``out``).
    """
    source, space, time, mode = _source_args(source, space, time)
    _solve_rows(u, source, space, time, dts, rows, d, e, _EMPTY_2D if g is None else g, out, mode)


def _source_args(
    source: np.ndarray | None, space: np.ndarray | None, time: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The kernels' source arguments (empty arrays where unused) and their mode."""
    if source is not None:
        return source, _EMPTY_1D, _EMPTY_1D, FULL_SOURCE
    if space is not None and time is not None:
        return _EMPTY_2D, space, time, SEPARABLE_SOURCE
    return _EMPTY_2D, _EMPTY_1D, _EMPTY_1D, NO_SOURCE


def solve_chain(
    u0: np.ndarray,
    dts: np.ndarray,
    d: np.ndarray,
    e: np.ndarray,
    out: np.ndarray,
    g: np.ndarray | None = None,
    source: np.ndarray | None = None,
    space: np.ndarray | None = None,
    time: np.ndarray | None = None,
) -> None:
    """Sequential steps in one call: ``out[k] = A^{-1} (out[k-1] + dts[k] f[k]) (+ g[k])``, ``out[-1] = u0``.

    What a coarsest-level solve does point by point (each right-hand side is the previous
    solution), without a Python call per point.  ``u0``: ``(n,)``; ``out``, ``g``, ``source``:
    ``(count, n)``, any strides (``out`` must not overlap ``u0``); ``space``, ``time``,
    ``dts`` as in :func:`solve_rows`.  Bitwise the same as :func:`solve_rows` on one row at a
    time followed by ``out[k] += g[k]``.
    """
    source, space, time, mode = _source_args(source, space, time)
    _solve_chain(u0, source, space, time, dts, d, e, _EMPTY_2D if g is None else g, out, mode)


def solve_intervals(
    u: np.ndarray,
    dt: float,
    d: np.ndarray,
    e: np.ndarray,
    m: int,
    npts: int,
    g: np.ndarray | None = None,
    source: np.ndarray | None = None,
    space: np.ndarray | None = None,
    time: np.ndarray | None = None,
) -> None:
    """F-relaxation of a run of C-intervals in place: ``u[p] = A^{-1} (u[p-1] + dt f[p]) (+ g[p])``.

    ``u[:npts]``: ``(>= npts, n)``, any strides; point ``k*m`` starts interval ``k`` and is
    only read, every other point is written (the last interval may be cut short by ``npts``).
    One step size ``dt``, ``A = L D L^T`` from ``d``, ``e``; ``f[p]`` (the source at point
    ``p``'s time) is ``source[p]`` (``(npts, n)``), ``space * time[p]`` or absent (entries at
    the C-points are not used); ``g``: ``(npts, n)``.  Bitwise the same as :func:`solve_rows`
    on the points of offset 1, then 2, ..., each from the one before.
    """
    source, space, time, mode = _source_args(source, space, time)
    _solve_intervals(u, source, space, time, float(dt), d, e, _EMPTY_2D if g is None else g, int(m), int(npts), mode)
