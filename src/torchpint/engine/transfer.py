"""Moving between levels: FAS restriction (injection) and the coarse-grid correction.

With injection ``R`` and ``A(u)_i = u_i - Phi(u_{i-1})``, the coarse FAS problem is
``A_c(u_c) = R(g - A(u)) + A_c(R u)``, i.e. at coarse point ``i`` (fine point ``I = i*m``)

    g_c[i] = (g[I] + Phi(u[I-1]) - u[I]) + (v_c[i] - Phi_c(v_c[i-1])),   v_c = R u.

Both pieces are parallel over points; the coarse point ``i`` lives on the rank owning the
fine point ``I``, so injection and correction need no communication.

The correction ``u[C] += u_c - v_c`` is applied as ``u[C] = u_c``: the fine C-points do not
change while the coarse level is solved, so ``v_c`` still equals them and need not be kept
(one state per coarse point saved; the two differ only by rounding).
"""

from __future__ import annotations

import torch

from torchpint.engine.level import Level
from torchpint.engine.relax import Cached, c_images, c_slice, c_values, implicit_sweep, point_images, put_c
from torchpint.engine.state import State, length, put, take, tree_map


def restrict(fine: Level, coarse: Level, cached: Cached | None = None) -> None:
    """Inject the fine approximation and build the coarse FAS right-hand side.

    ``cached``: the fine level's ``c_images`` for its current ``u``, if the caller has them.
    The coarse ``u`` and ``g`` are rewritten in the storage they already have (no allocation);
    the arithmetic is the module note's ``g = r + (v - Phi_c(v))`` (bitwise as before).
    """
    assert coarse.u is not None and coarse.g is not None
    with fine.timer.phase("restrict"):
        v = c_values(fine)  # the coarse level's points, all of them (a view of the fine level)
        send_pair, recv_pair = _one_message(fine, coarse) if cached is None and not fine.c_only else (False, False)
        received: list[State] = []
        if cached is not None:
            images = cached.images
        else:
            extra = None  # tau's halo: our last coarse point, or its image (see point_images)
            if send_pair and fine.halo_images:
                n_c = length(v)
                extra = take(coarse.phi(take(v, slice(n_c - 1, n_c)), coarse.layout.hi - 1, 1,
                                        out=coarse.scratch("halo image", 1)), 0)
            elif send_pair:
                extra = take(v, length(v) - 1)
            images = c_images(fine, send_extra=extra, recv_extra=received if recv_pair else None,
                              scratch=None if fine.c_only else "restrict images")
        if not coarse.alias:  # an aliasing coarse u already is v
            put(coarse.u, slice(None), take(v, c_slice(coarse)) if coarse.c_only else v)
        if coarse.layout.n_local == 0:
            return
        # Phi_c(v) straight into g, then g = v - Phi_c(v) in place, then g += (u_C images - v):
        # the sum of the same two differences as the module note (addition commutes, so bitwise
        # the same), without zeroing g first or a temporary per term.
        tau = point_images(coarse, v, every_point=True, with_g=False, into=coarse.g,
                           send=not send_pair, halo=received[0] if received else None)
        start = coarse.layout.n_local if tau is None else tau[0].start
        if start > 0:  # points without a tau image (global point 0): no equation there, g = 0
            tree_map(torch.Tensor.zero_, take(coarse.g, slice(0, start)))
        if tau is not None:
            where = tau[0]
            tree_map(lambda g, a: torch.sub(a, g, out=g), take(coarse.g, where), take(v, where))
        if images is not None:
            where, image = images  # fine C-index k is coarse local point k (a tau target too)
            # Fresh images are ours to overwrite; cached ones belong to the caller.
            diff = tree_map(lambda a, b: torch.sub(a, b, out=a) if cached is None else a - b, image, take(v, where))
            tree_map(torch.Tensor.add_, take(coarse.g, where), diff)


def _one_message(fine: Level, coarse: Level) -> tuple[bool, bool]:
    """Whether this rank sends, and whether it receives, the restriction's two halos as one message.

    The fine images need the previous rank's last fine point, ``tau`` its last coarse point
    (a fine C-point): both are final when the restriction starts, so when they go between the
    same two ranks they travel together (one message per level and iteration fewer, each of
    which costs rank 1 about 0.7 ms with gloo; docs/engine.md).  Sender and receiver decide
    alike: the rank after this one on the fine level must need the fine halo and be the next
    owner on the coarse level too, seen from either side.
    """
    fl, cl = fine.layout, coarse.layout
    assert fl.m is not None
    needs = lambda boundary: boundary % fl.m == 0  # as point_images on the fine level
    nxt, prev = fl.next_owner(), fl.prev_owner()
    send = nxt is not None and needs(fl.hi) and cl.next_owner() == nxt
    receive = prev is not None and needs(fl.lo) and cl.prev_owner() == prev
    return send, receive


def correct(fine: Level, coarse: Level) -> None:
    """Give the fine C-points the coarse solution (see the module note); also nested iteration's injection."""
    assert coarse.u is not None
    with fine.timer.phase("correct"):
        if coarse.layout.n_local == 0:
            return
        if not coarse.c_only:
            if not coarse.alias:  # an aliasing coarse u already is the fine C-points
                put_c(fine, slice(0, None), coarse.u)
            return
        put_c(fine, c_slice(coarse), coarse.u)

        def to_fine(where: slice, values: State) -> None:
            put_c(fine, where, values)

        implicit_sweep(coarse, images=False, visit=to_fine)
