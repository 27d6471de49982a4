"""Moving between levels: FAS restriction (injection) and the coarse-grid correction.

With injection ``R`` and ``A(u)_i = u_i - Phi(u_{i-1})``, the coarse FAS problem is
``A_c(u_c) = R(g - A(u)) + A_c(R u)``, i.e. at coarse point ``i`` (fine point ``I = i*m``)

    g_c[i] = (g[I] + Phi(u[I-1]) - u[I]) + (v_c[i] - Phi_c(v_c[i-1])),   v_c = R u.

Both pieces are parallel over points; the coarse point ``i`` lives on the rank owning the
fine point ``I``, so injection and correction need no communication.
"""

from __future__ import annotations

import torch

from torchpint.engine.level import Level
from torchpint.engine.relax import Cached, c_residual, point_images
from torchpint.engine.state import add, clone, put, sub, take, tree_map


def c_slice(level: Level) -> slice:
    """Local slice of the C-points of a (non-coarsest) level."""
    layout = level.layout
    assert layout.m is not None
    first = -(-layout.lo // layout.m) * layout.m - layout.lo
    return slice(first, layout.n_local, layout.m)


def restrict(fine: Level, coarse: Level, cached: Cached | None = None) -> None:
    """Inject the fine approximation and build the coarse FAS right-hand side.

    ``cached``: the fine level's ``point_images`` for its current ``u``, if the caller has them.
    """
    assert fine.u is not None
    with fine.timer.phase("restrict"):
        residual = c_residual(fine, cached)
        coarse.v = clone(take(fine.u, c_slice(fine)))
        coarse.u = clone(coarse.v)
        coarse.g = tree_map(torch.zeros_like, coarse.v)
        if coarse.layout.n_local == 0:
            return
        tau = point_images(coarse, coarse.v, every_point=True, with_g=False)
        if residual is not None:
            # Fine C-point I = lo_f + (start + k*m) maps to coarse local index (I/m - lo_c).
            where, r = residual
            put(coarse.g, _to_coarse(fine, coarse, where), r)
        if tau is not None:
            where, image = tau
            put(coarse.g, where, add(take(coarse.g, where), sub(take(coarse.v, where), image)))


def _to_coarse(fine: Level, coarse: Level, where: slice) -> slice:
    m = fine.layout.m
    assert m is not None
    first_global = fine.layout.lo + where.start
    return slice(first_global // m - coarse.layout.lo, coarse.layout.n_local, 1)


def correct(fine: Level, coarse: Level) -> None:
    """``u[C] += u_c - v_c``: add the coarse-grid error to the fine C-points."""
    assert fine.u is not None and coarse.u is not None and coarse.v is not None
    with fine.timer.phase("correct"):
        if coarse.layout.n_local == 0:
            return
        where = c_slice(fine)
        put(fine.u, where, add(take(fine.u, where), sub(coarse.u, coarse.v)))
