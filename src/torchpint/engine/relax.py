"""Relaxation on one level: F-relaxation, (weighted) C-relaxation, the sequential solve.

Every level solves ``u_i = Phi(u_{i-1}) + g_i`` (``g = 0`` on the finest level) for
``i >= 1`` with ``u_0`` fixed.  F-relaxation satisfies it at the F-points from the current
C-points; C-relaxation at the C-points from the F-points before them.  Both are parallel
over C-intervals: one batched step per offset inside the interval.

A level that keeps only its C-points (``Level.c_only``) has no F-points to relax: they are
by definition the F-relaxation of the current C-points, so F-relaxation is free and every
operation that needs F-points (C-relaxation, the residual, the correction of the finer
level) rebuilds them on the fly with :func:`implicit_sweep`: the same number of steps as
with stored F-points, a fraction ``1/m`` of the memory.

C-points are addressed by their *C-index*: the ``k``-th C-point this rank owns (on a
level with cf ``m`` it is also the ``k``-th point this rank owns on the next coarser level).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from torchpint.engine.level import Level
from torchpint.engine.state import State, axpby, cat, empty_stack, length, put, single, stack, sub, take, tree_map


def _first_local_c(level: Level) -> int:
    """Local index of the first C-point this rank owns (may be >= n_local: none)."""
    m = level.layout.m or 1  # the coarsest level: every point is a C-point
    lo = level.layout.lo
    return -(-lo // m) * m - lo


def f_relax(level: Level) -> None:
    """Propagate from every C-point through the F-points of its interval."""
    layout, u = level.layout, level.u
    assert u is not None and layout.m is not None
    m, n, lo = layout.m, layout.n_local, layout.lo
    if n == 0 or level.c_only:
        return  # implicit F-points are always F-relaxed
    fc = _first_local_c(level)
    leading = min(fc, n)  # F-points before the first local C-point: their interval began earlier
    needs = lambda boundary: boundary % m != 0  # the next rank starts inside an interval

    with level.timer.phase("f_relax"):
        if fc < n:
            # Intervals that start here: one call, or a batched step per offset (a strided slice).
            level.relax_intervals(fc, n - fc)
            level.send_last(u, needs)  # our last interval may continue on the next rank
        if leading > 0:
            # The tail of an interval that began on an earlier rank: wait for its last point.
            before = level.recv_halo(needs)
            assert before is not None
            for i in range(leading):
                src = single(before) if i == 0 else take(u, slice(i - 1, i))
                level.phi_plus_g(src, lo + i - 1, 1, out=take(u, slice(i, i + 1)))
            if fc >= n:
                level.send_last(u, needs)


def point_images(
    level: Level,
    values: State,
    every_point: bool = False,
    with_g: bool = True,
    into: State | None = None,
    *,
    send: bool = True,
    send_extra: State | None = None,
    halo: State | None = None,
    recv_extra: list[State] | None = None,
    scratch: str | None = None,
) -> tuple[slice, State] | None:
    """``Phi(values_{i-1}) (+ g_i)`` at the local C-points ``i >= 1`` (or every point ``i >= 1``).

    Needs the halo when this rank's first target is its first point: the previous rank's last
    point, or with ``level.halo_images`` its image (:meth:`~torchpint.engine.level.Level.send_image`):
    the step into the first target is then taken there and only ``g`` is added here (the same
    bits: the step adds ``g`` as one rounding after its solve).  Returns the local slice of the
    targets and the stacked images, or None if this rank has no target.
    ``into``: a stacked state of the local points (e.g. ``values`` itself, when only targets
    change) into whose targets the images are written; the returned images are then that view.

    Two halos in one message (the restriction's, see :func:`~torchpint.engine.transfer.restrict`):
    ``send_extra`` travels with this rank's halo (an image too, with ``halo_images``), and
    ``recv_extra`` (a list) receives what travelled with the halo; ``send=False`` and ``halo``
    are for the second exchange, whose value has already been sent or received that way.
    ``scratch``: without ``into``, the images go to the level's scratch storage of that name
    (:meth:`~torchpint.engine.level.Level.scratch`).
    """
    layout = level.layout
    n, lo = layout.n_local, layout.lo
    if n == 0:
        return None
    m = 1 if every_point or layout.m is None else layout.m
    needs = lambda boundary: boundary % m == 0  # the next rank starts at a target
    if send and level.halo_images:
        level.send_image(values, needs, send_extra)
    elif send and send_extra is None:
        level.send_last(values, needs)
    elif send:
        level.send_point(stack([take(values, n - 1), send_extra]), needs)
    # only for the first target: the others are stepped meanwhile
    pending = None if halo is not None else level.post_halo(needs, pair=recv_extra is not None)
    first = -(-lo // m) * m - lo  # local index of the first target
    start = first if lo + first > 0 else first + m  # global point 0 is the initial value
    count = len(range(start, n, m))
    if count == 0:
        return None
    step = level.phi_plus_g if with_g else level.phi
    where = slice(start, n, m)
    if into is not None:
        targets = take(into, where)
    else:
        targets = level.scratch(scratch, count) if scratch else empty_stack(level.template, count)
    if pending is None and halo is None:
        step(take(values, slice(start - 1, start - 1 + count * m, m)), lo + start - 1, count, m, out=targets)
        return where, targets
    # start == 0: the first target's predecessor (or its image) is the halo, the others' are local.
    if count > 1:
        prev = take(values, slice(m - 1, m - 1 + (count - 1) * m, m))
        step(prev, lo + m - 1, count - 1, m, out=take(targets, slice(1, None)))
    if halo is None:
        assert pending is not None
        halo = level.wait_halo(pending)
        if recv_extra is not None:
            recv_extra.append(take(halo, 1))
            halo = take(halo, 0)
    first_target = take(targets, slice(0, 1))
    if not level.halo_images:
        step(single(halo), lo - 1, 1, out=first_target)
    elif with_g and level.g is not None:
        g = take(level.g, slice(0, 1))
        tree_map(lambda image, g, out: torch.add(image, g, out=out), single(halo), g, first_target)
    else:
        put(first_target, slice(None), single(halo))
    return where, targets


Images = tuple[slice, State]  # (C-indices, stacked values at them)


def c_values(level: Level) -> State:
    """The values at this rank's C-points (a view when F-points are stored)."""
    assert level.u is not None
    return level.u if level.c_only else take(level.u, c_slice(level))


def put_c(level: Level, where: slice, values: State) -> None:
    """Write ``values`` at the C-indices ``where``."""
    assert level.u is not None
    put(level.u, where if level.c_only else _c_to_local(level, where), values)


def c_slice(level: Level) -> slice:
    """Local slice of the C-points of a level that stores every point."""
    m = level.layout.m or 1
    return slice(_first_local_c(level), level.layout.n_local, m)


def _c_to_local(level: Level, where: slice) -> slice:
    """C-indices ``where`` (a slice with a positive step) as local point indices."""
    m = level.layout.m or 1
    fc = _first_local_c(level)
    stop = level.layout.n_local if where.stop is None else fc + where.stop * m
    return slice(fc + (where.start or 0) * m, stop, m * (where.step or 1))


def c_images(
    level: Level, send_extra: State | None = None, recv_extra: list[State] | None = None, scratch: str | None = None
) -> Images | None:
    """``Phi(u_{c-1}) + g_c`` at this rank's C-points ``c >= 1``, by C-index (None: no target).

    ``send_extra``, ``recv_extra``: a second value along with the halo; ``scratch``: where the
    images go (see :func:`point_images`; neither on a C-points-only level).
    """
    assert level.u is not None
    if level.c_only:
        assert send_extra is None and recv_extra is None
        return implicit_sweep(level, images=True)
    got = point_images(level, level.u, send_extra=send_extra, recv_extra=recv_extra, scratch=scratch)
    if got is None:
        return None
    where, images = got
    m = level.layout.m or 1
    return slice((where.start - _first_local_c(level)) // m, None), images


PointVisitor = Callable[[slice, State], None]


def implicit_sweep(level: Level, *, images: bool, visit: PointVisitor | None = None) -> Images | None:
    """F-relax a C-points-only level on the fly: rebuild its F-points without storing them.

    Every F-point that this rank owns is computed from the C-point that starts its interval
    (one batched step per offset, as :func:`f_relax`) and handed to ``visit(local points,
    values)``; with ``images`` the step past each interval's last F-point gives ``Phi(u_{c-1})
    + g_c`` at the C-points ``c >= 1``, returned by C-index.  An interval that crosses into
    the next rank continues there from this rank's last point (one message, forward in time).
    """
    layout, u = level.layout, level.u
    assert u is not None and layout.m is not None and level.c_only
    m, n, lo = layout.m, layout.n_local, layout.lo
    if n == 0:
        return None
    fc = _first_local_c(level)
    n_c = len(range(fc, n, m))
    # The next rank needs our last point to continue an interval, or to image its first C-point.
    needs = lambda boundary: images or boundary % m != 0
    pieces: list[State] = []
    first_target = 1  # C-index of the first image: 0 only if it comes from the halo

    if n_c > 0:
        last_offset = (n - 1 - fc) % m  # where our last point sits in its interval
        last = take(u, n_c - 1)
        current = u
        for j in range(1, m + 1):
            count = len(range(fc + j, n, m))
            if count == 0 or (j == m and not images):
                break
            new = level.phi_plus_g(take(current, slice(0, count)), lo + fc + j - 1, count, m)
            if j == m:
                pieces.append(new)  # images at the C-indices 1 .. n_c - 1
                break
            if visit is not None:
                visit(slice(fc + j, n, m), new)
            if j == last_offset:
                last = take(new, count - 1)
            current = new
        level.send_point(last, needs)
    if lo > 0 and (fc > 0 or images):
        # The points before our first C-point continue an interval from an earlier rank.
        value = level.recv_halo(needs)
        assert value is not None
        for i in range(min(fc, n)):
            value = take(level.phi_plus_g(single(value), lo + i - 1, 1), 0)
            if visit is not None:
                visit(slice(i, i + 1), single(value))
        if fc < n and images:
            pieces.insert(0, level.phi_plus_g(single(value), lo + fc - 1, 1))
            first_target = 0
        if n_c == 0:
            level.send_point(value, needs)
    if not pieces:
        return None
    return slice(first_target, n_c), cat(pieces)


@dataclass(frozen=True)
class Cached:
    """``c_images(level)`` computed earlier for the same ``u``.

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
        if cached is None and weight == 1.0 and not level.c_only:
            # The images are the new C-points: step straight into them (the F-points read are disjoint).
            point_images(level, level.u, into=level.u)
            return
        images = c_images(level) if cached is None else cached.images
        if images is None:
            return
        where, new = images
        if weight != 1.0:
            new = axpby(weight, new, 1.0 - weight, take(c_values(level), where))
        put_c(level, where, new)


def c_residual(level: Level, cached: Cached | None = None, scratch: str | None = None) -> Images | None:
    """``g_c + Phi(u_{c-1}) - u_c`` at the local C-points ``c >= 1`` (from ``cached`` if given).

    ``scratch``: the residual goes to the level's scratch storage of that name.
    """
    images = c_images(level) if cached is None else cached.images
    if images is None:
        return None
    where, new = images
    if scratch is None:
        return where, sub(new, take(c_values(level), where))
    out = level.scratch(scratch, length(new))
    tree_map(lambda a, b, o: torch.sub(a, b, out=o), new, take(c_values(level), where), out)
    return where, out


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
        first = 1 if lo == 0 else 0  # global point 0 is the initial value
        if first < n:
            src = take(u, 0) if first == 1 else before
            assert src is not None  # the previous rank's last point (received above)
            level.chain(src, lo + first - 1, n - first, out=take(u, slice(first, n)))
        level.send_last(u, always)
