"""One level of the MGRIT hierarchy on one rank: its layout, its states, its stepper.

The trajectory of the points a rank owns is kept *stacked* (leading time axis), so the
points of the same offset inside their C-intervals form a strided slice, a view: relaxing
every interval by one step is one ``step_batch`` call on that slice, with no copies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from torchpint.engine.comm import Comm, PendingRecv
from torchpint.engine.grid import Layout
from torchpint.engine.problem import Problem, step_batch, step_batch_into
from torchpint.engine.state import State, add, empty_stack, expand, length, put, single, take
from torchpint.engine.timing import PhaseTimer

if TYPE_CHECKING:
    from torchpint.engine.replay import IterationRecorder, Slot


@dataclass
class Level:
    """Storage and local stepping of one level.

    ``u`` is the current approximation at the owned points, or, when ``c_only``, at the owned
    C-points only: the F-points are then implicit, always the F-relaxation of the C-points,
    and rebuilt on the fly whenever they are needed (:func:`~torchpint.engine.relax.implicit_sweep`).
    ``g`` is the FAS right-hand side at every owned point (``None`` on the finest level, where
    it is zero).
    """

    index: int
    layout: Layout
    problem: Problem
    comm: Comm
    timer: PhaseTimer
    template: State  # one state, for receiving and for the shape of the data
    u: State | None = None
    g: State | None = None
    c_only: bool = False
    alias: bool = False  # u is a view of the finer level's C-points (injection and correction are free)
    steps_taken: int = field(default=0)
    # (first, count, stride) -> the step's (t_start, t_stop): the same batches recur every
    # iteration, and handing the problem the same tensors saves two slicing ops per step.
    _times: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)
    # (first, npts) -> the times of a run of C-intervals (relax_intervals), cached likewise
    _runs: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)
    _scratch: dict[str, State] = field(default_factory=dict, repr=False)  # see scratch()
    _pair_template: State | None = field(default=None, repr=False)  # see post_halo()
    # While an iteration is recorded for replay: every call into the problem or the comm goes
    # through it (engine/replay.py).
    recorder: IterationRecorder | None = field(default=None, repr=False)
    # Halos of C-point images carry Phi of the sender's last point (MGRIT's halo_images): only
    # where every rank can step at every point (not a problem holding only its rank's layers).
    halo_images: bool = False

    def _opaque(self, fn: Callable[[], Any]) -> Any:
        """Run a call into the problem or the comm (one operation of a recorded iteration)."""
        return fn() if self.recorder is None else self.recorder.call(fn)

    # ------------------------------------------------------------------ stepping
    def _slices(self, first: int, count: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``t_start``, ``t_stop`` of the steps from the global points ``first + k*stride`` (cached views)."""
        key = (first, count, stride)
        times = self._times.get(key)
        if times is None:
            t = self.layout.t
            times = self._times[key] = (
                t[first : first + count * stride : stride],
                t[first + 1 : first + 1 + count * stride : stride],
            )
        return times

    def phi(
        self, u: State, first: int, count: int, stride: int = 1, out: State | None = None, g: State | None = None
    ) -> State:
        """Step the stacked states ``u`` from the global points ``first + k*stride`` to the next point.

        ``out``: where to write the result (e.g. a view of ``self.u``; must not overlap ``u``);
        default a new state.  ``g`` (only with ``out``): added to the result, by the problem's
        step when it can (:func:`~torchpint.engine.problem.step_batch_into`).
        """
        t0, t1 = self._slices(first, count, stride)
        self.steps_taken += count
        with self.timer.phase("step"):
            if out is None:
                return self._opaque(lambda: step_batch(self.problem, u, t0, t1))
            self._opaque(lambda: step_batch_into(self.problem, u, t0, t1, out, g))
            return out

    def chain(self, u: State, first: int, count: int, out: State) -> None:
        """``count`` consecutive steps of the level's equation from ``u`` (one state) at the global point ``first``.

        ``out[k] = Phi(out[k-1]) + g`` at the points ``first + 1 + k`` (``out[-1] = u``): the
        sequential solve.  One call of the problem's ``step_sequence_into`` when it has one and
        the state is a tensor (no Python round trip per point), else one step per point.
        """
        sequence = getattr(self.problem, "step_sequence_into", None)
        if sequence is None or not isinstance(out, torch.Tensor):
            for k in range(count):
                src = single(u) if k == 0 else take(out, slice(k - 1, k))
                self.phi_plus_g(src, first + k, 1, out=take(out, slice(k, k + 1)))
            return
        t0, t1 = self._slices(first, count, 1)
        lo = self.layout.lo
        g = None if self.g is None else self.g[first + 1 - lo : first + 1 - lo + count]
        self.steps_taken += count
        with self.timer.phase("step"):
            self._opaque(lambda: sequence(u, t0, t1, out, g))

    def relax_intervals(self, first: int, npts: int) -> None:
        """F-relax the C-intervals that start at local point ``first`` (a C-point) and run through ``npts`` points.

        One call of the problem's ``step_intervals_into`` when it has one (and takes this run),
        else one batched step per offset inside the intervals, each a strided view of ``u``.
        """
        m = self.layout.m
        assert self.u is not None and m is not None
        fused = getattr(self.problem, "step_intervals_into", None)
        if fused is not None and isinstance(self.u, torch.Tensor):
            t = self._runs.get((first, npts))
            if t is None:  # the same tensor every iteration, as _slices
                lo = self.layout.lo
                t = self._runs[(first, npts)] = self.layout.t[lo + first : lo + first + npts]
            g = None if self.g is None else self.g[first : first + npts]
            run = self.u[first : first + npts]
            with self.timer.phase("step"):
                done = self._opaque(lambda: fused(run, t, m, g))
            if done:
                self.steps_taken += npts - -(-npts // m)
                return
        lo, stop = self.layout.lo, first + npts
        for j in range(1, m):
            count = len(range(first + j, stop, m))
            if count == 0:
                break
            prev = take(self.u, slice(first + j - 1, first + j - 1 + count * m, m))
            self.phi_plus_g(prev, lo + first + j - 1, count, m, out=take(self.u, slice(first + j, stop, m)))

    def scratch(self, name: str, count: int) -> State:
        """Storage for ``count`` points kept for the next use of the same ``name`` (contents undefined).

        The per-iteration temporaries of the same sizes (C-point images, residuals) reuse their
        memory instead of allocating megabytes each iteration, which the C allocator often
        returns to the system and then takes back, a page fault per 4 KiB.  Each name has one
        user at a time; what it holds is valid until that name is asked for again.
        """
        held = self._scratch.get(name)
        if held is None or length(held) != count:
            held = self._scratch[name] = empty_stack(self.template, count)
        return held

    def stored_states(self) -> int:
        """How many states this level holds on this rank (``u`` and ``g``)."""
        return sum(length(x) for x in (self.u, self.g) if x is not None)

    def phi_plus_g(self, u: State, first: int, count: int, stride: int = 1, out: State | None = None) -> State:
        """``Phi(u) + g`` at the points that follow ``first + k*stride`` (the level's equation); ``out`` as in :meth:`phi`."""
        if self.g is None:
            return self.phi(u, first, count, stride, out)
        lo = self.layout.lo
        where = slice(first + 1 - lo, first + 1 - lo + count * stride, stride)
        g = self.g[where] if isinstance(self.g, torch.Tensor) else take(self.g, where)
        if out is not None:
            return self.phi(u, first, count, stride, out, g)
        return add(self.phi(u, first, count, stride), g)  # the problem's result may not be ours to modify

    # ------------------------------------------------------------------ halo
    # The halo: a rank sends its last point forward to the next non-empty rank, which receives it
    # as the point before its first.  ``needs(boundary)`` says whether the rank whose first point
    # is the global index ``boundary`` needs the point before it; the sender evaluates it at its
    # ``hi``, the receiver at its ``lo`` (the same index), so a message is posted exactly when the
    # other side waits for it.  Sends are non-blocking and always go forward in time: no deadlock.
    def send_last(self, values: State, needs: Callable[[int], bool]) -> None:
        """Send the last point of the stacked ``values`` (this rank's points) if the next rank needs it."""
        nxt = self._receiver(needs)
        if nxt is not None:  # (no view made otherwise: right after a sweep even that costs ~20 us)
            with self.timer.phase("comm"):
                last = take(values, self.layout.n_local - 1)
                self._opaque(lambda: self.comm.send(last, nxt))

    def send_image(self, values: State, needs: Callable[[int], bool], extra: State | None = None) -> None:
        """Send ``Phi`` of the last point of ``values`` (without ``g``) if the next rank needs it: the image
        of its first target, stepped here so that the later rank, the one on the critical path
        (it waits for the earlier ones, never the reverse), does not.  ``extra`` travels along.
        """
        nxt = self._receiver(needs)
        if nxt is None:
            return
        n = self.layout.n_local
        message = self.scratch("halo image" if extra is None else "halo pair", 1 if extra is None else 2)
        self.phi(take(values, slice(n - 1, n)), self.layout.hi - 1, 1, out=take(message, slice(0, 1)))
        if extra is not None:
            put(message, slice(1, 2), single(extra))
        with self.timer.phase("comm"):
            payload = take(message, 0) if extra is None else message
            self._opaque(lambda: self.comm.send(payload, nxt))

    def send_point(self, value: State, needs: Callable[[int], bool]) -> None:
        """Send ``value``, this rank's last point, to the next rank if it needs it."""
        nxt = self._receiver(needs)
        if nxt is not None:
            with self.timer.phase("comm"):
                self._opaque(lambda: self.comm.send(value, nxt))

    def _receiver(self, needs: Callable[[int], bool]) -> int | None:
        """The rank that needs this rank's last point, if any."""
        nxt = self.layout.next_owner()
        return nxt if nxt is not None and needs(self.layout.hi) else None

    def recv_halo(self, needs: Callable[[int], bool]) -> State | None:
        """The point before this rank's first, if this rank needs it (blocking)."""
        prev = self.layout.prev_owner()
        if prev is None or not needs(self.layout.lo):
            return None
        with self.timer.phase("comm"):
            return self._opaque(lambda: self.comm.recv(self.template, prev))

    def post_halo(self, needs: Callable[[int], bool], pair: bool = False) -> PendingRecv | Slot | None:
        """:meth:`recv_halo` posted without waiting: work that does not need the halo goes on meanwhile.

        ``pair``: the message holds two stacked states (the halo and a second value sent along).
        """
        prev = self.layout.prev_owner()
        if prev is None or not needs(self.layout.lo):
            return None
        template = self.template
        if pair:
            if self._pair_template is None:  # made once (expand copies): only its shape is read
                self._pair_template = expand(self.template, 2)
            template = self._pair_template
        if self.recorder is not None:  # (each replay posts its own receive)
            return self.recorder.post(lambda: self.comm.irecv(template, prev))
        return self.comm.irecv(template, prev)

    def wait_halo(self, pending: PendingRecv | Slot) -> State:
        with self.timer.phase("comm"):
            return self._opaque(pending.wait)

