"""Relaxation on one level: F-relaxation, (weighted) C-relaxation, the sequential solve.

Every level solves ``u_i = Phi(u_{i-1}) + g_i`` (``g = 0`` on the finest level) for
``i >= 1`` with ``u_0`` fixed.  F-relaxation satisfies it at the F-points from the current
C-points; C-relaxation at the C-points from the F-points before them.  Both are parallel
over C-intervals: one batched step per offset inside the interval.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchpint.engine.level import Level, cat_points
from torchpint.engine.state import State, axpby, put, stack, sub, take


def _first_local_c(level: Level) -> int:
    """Local index of the first C-point this rank owns (may be >= n_local: none)."""
    m = level.layout.m
    assert m is not None
    lo = level.layout.lo
    return -(-lo // m) * m - lo


def f_relax(level: Level) -> None:
    """Propagate from every C-point through the F-points of its interval."""
    layout, u = level.layout, level.u
    assert u is not None and layout.m is not None
    m, n, lo = layout.m, layout.n_local, layout.lo
    if n == 0:
        return
    fc = _first_local_c(level)
    leading = min(fc, n)  # F-points before the first local C-point: their interval began earlier
    needs = lambda boundary: boundary % m != 0  # the next rank starts inside an interval

    with level.timer.phase("f_relax"):
        if fc < n:
            # Intervals that start here: offset j of every interval is one strided slice.
            for j in range(1, m):
                count = len(range(fc + j, n, m))
                if count == 0:
                    break
                prev = take(u, slice(fc + j - 1, fc + j - 1 + count * m, m))
                put(u, slice(fc + j, n, m), level.phi_plus_g(prev, lo + fc + j - 1, count, m))
            level.send_last(u, needs)  # our last interval may continue on the next rank
        if leading > 0:
            # The tail of an interval that began on an earlier rank: wait for its last point.
            before = level.recv_halo(needs)
            assert before is not None
            for i in range(leading):
                src = before if i == 0 else take(u, i - 1)
                put(u, i, take(level.phi_plus_g(stack([src]), lo + i - 1, 1), 0))
            if fc >= n:
                level.send_last(u, needs)


def point_images(
    level: Level, values: State, every_point: bool = False, with_g: bool = True
) -> tuple[slice, State] | None:
    """``Phi(values_{i-1}) (+ g_i)`` at the local C-points ``i >= 1`` (or every point ``i >= 1``).

    Needs the halo when this rank's first target is its first point.  Returns the local
    slice of the targets and the stacked images, or None if this rank has no target.
    """
    layout = level.layout
    n, lo = layout.n_local, layout.lo
    m = 1 if every_point or layout.m is None else layout.m
    needs = lambda boundary: boundary % m == 0  # the next rank starts at a target
    halo = level.halo(values, needs) if n > 0 else None
    if n == 0:
        return None
    first = -(-lo // m) * m - lo  # local index of the first target
    start = first if lo + first > 0 else first + m  # global point 0 is the initial value
    count = len(range(start, n, m))
    if count == 0:
        return None
    if start == 0:
        assert halo is not None
        rest = take(values, slice(m - 1, m - 1 + (count - 1) * m, m))
        prev = cat_points(halo, rest)
    else:
        prev = take(values, slice(start - 1, start - 1 + count * m, m))
    step = level.phi_plus_g if with_g else level.phi
    return slice(start, n, m), step(prev, lo + start - 1, count, m)


Images = tuple[slice, State]


@dataclass(frozen=True)
class Cached:
    """``point_images(level, level.u)`` computed earlier for the same ``u``.

    ``images`` is None on a rank without targets.  Whether a cache is used must be decided
    alike on every rank (the halo exchange it saves involves two of them), hence this wrapper
    rather than a plain optional value.
    """

    images: Images | None


def c_relax(level: Level, weight: float = 1.0, cached: Cached | None = None) -> None:
    """Update every C-point from the F-point before it; ``weight != 1`` under/over-relaxes.

    ``cached``: the images for the current ``u`` if the caller already has them (the residual
    of the previous iteration), saving a sweep of steps and a halo message.
    """
    assert level.u is not None
    with level.timer.phase("c_relax"):
        images = point_images(level, level.u) if cached is None else cached.images
        if images is None:
            return
        where, new = images
        if weight != 1.0:
            new = axpby(weight, new, 1.0 - weight, take(level.u, where))
        put(level.u, where, new)


def c_residual(level: Level, cached: Cached | None = None) -> tuple[slice, State] | None:
    """``g_c + Phi(u_{c-1}) - u_c`` at the local C-points ``c >= 1`` (from ``cached`` if given)."""
    assert level.u is not None
    images = point_images(level, level.u) if cached is None else cached.images
    if images is None:
        return None
    where, new = images
    return where, sub(new, take(level.u, where))


def sequential_solve(level: Level) -> None:
    """Solve the level exactly by stepping through it (the coarsest level; serial over ranks)."""
    layout, u = level.layout, level.u
    assert u is not None
    n, lo = layout.n_local, layout.lo
    if n == 0:
        return
    always = lambda boundary: True
    with level.timer.phase("coarse_solve"):
        before = level.recv_halo(always)
        for i in range(n):
            if lo + i == 0:
                continue
            src = before if i == 0 else take(u, i - 1)
            assert src is not None  # the previous rank's last point (received above)
            put(u, i, take(level.phi_plus_g(stack([src]), lo + i - 1, 1), 0))
        level.send_last(u, always)
