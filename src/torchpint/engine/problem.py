"""The contract between a problem and the solvers.

A problem is anything with ``step(u, t_start, t_stop) -> u_next``: one application of the
time-stepper from ``t_start`` to ``t_stop``.  That is all the engine needs (as in PyMGRIT's
``Application``, but states are torch tensors or containers of them).

Optional additions, both used by the engine when present:

* ``step_batch(u, t_start, t_stop)``: many *independent* states at once.  ``u`` is a stacked
  state (every leaf has a leading batch axis), ``t_start`` / ``t_stop`` are float64 tensors of
  shape ``(batch,)``.  F-relaxation, C-relaxation and the FAS restriction are parallel over
  intervals, and this is where a single process (or a single GPU) gets its time-parallel
  speed: one call advances every interval by one step.
* ``step_batch_into(u, t_start, t_stop, out)``: the same, written into ``out`` (a stacked state
  of ``u``'s structure, often a strided view of the engine's trajectory that does not overlap
  ``u``) instead of a new state: the engine then never copies a step's result.
* ``step_sequence_into(u, t_start, t_stop, out, g=None)``: ``count`` *consecutive* steps from
  one state ``u``: ``out[k] = step(out[k-1], t_start[k], t_stop[k]) (+ g[k])`` with ``out[-1] =
  u`` (``out`` and ``g`` stacked, ``count`` points).  The coarsest level's sequential solve is
  then one call instead of a Python round trip per point (tensor states only).
* ``step_intervals_into(u, t, m, g=None) -> bool``: the F-relaxation of a run of C-intervals
  in place: ``u`` (stacked, tensor states) holds consecutive points whose every ``m``-th,
  starting with the first, is a C-point (the last interval may be cut short), ``t`` their
  times; every other point ``p`` becomes ``step(u[p-1], t[p-1], t[p]) (+ g[p])``, in order.
  One call instead of one batched step per offset, so a problem can keep each interval's
  state where it is between its steps.  Returns False, touching nothing, when it cannot
  (e.g. steps of different sizes): the engine then steps offset by offset.
* ``initial_value()``: the state at ``t_start``, used when ``solve()`` is given none.

A solver accepts one problem for every level (the coarse levels then use the same stepper
with a larger step) or a sequence of problems, one per level (e.g. a coarse model with a
larger learning rate when the "time steps" are training steps).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Protocol, runtime_checkable

import torch

from torchpint.engine.state import State, length, put, stack, take, tree_map


@runtime_checkable
class Problem(Protocol):
    """One time step of a problem: ``u(t_stop)`` from ``u(t_start)``."""

    # ``Any``: a concrete problem narrows the state type (a Tensor, a dict of tensors, ...).
    def step(self, u: Any, t_start: float, t_stop: float) -> Any: ...


def step_batch(problem: Problem, u: State, t_start: torch.Tensor, t_stop: torch.Tensor) -> State:
    """Advance a stacked state one step per entry, with the problem's batched step if it has one."""
    batched = getattr(problem, "step_batch", None)
    if batched is not None:
        return batched(u, t_start, t_stop)
    n = length(u)
    return stack(
        [problem.step(take(u, i), float(t_start[i]), float(t_stop[i])) for i in range(n)]
    )


def step_batch_into(
    problem: Problem, u: State, t_start: torch.Tensor, t_stop: torch.Tensor, out: State, g: State | None = None
) -> None:
    """:func:`step_batch` written into ``out`` (the problem's ``step_batch_into`` if it has one), plus ``g``.

    A problem whose ``step_batch_into`` takes a ``g`` argument adds it as it writes ``out``
    (bitwise the same as adding afterwards, one pass over memory fewer); otherwise it is added here.
    """
    into = getattr(problem, "step_batch_into", None)
    if into is not None:
        if g is not None and _takes_g(type(problem)):
            into(u, t_start, t_stop, out, g=g)
            return
        into(u, t_start, t_stop, out)
    else:
        put(out, slice(None), step_batch(problem, u, t_start, t_stop))
    if g is not None:
        tree_map(torch.Tensor.add_, out, g)


@functools.cache
def _takes_g(cls: type) -> bool:
    """Whether ``cls.step_batch_into`` accepts ``g`` (a property of the class, so looked up once)."""
    try:
        return "g" in inspect.signature(cls.step_batch_into).parameters  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return False


class BatchedProblem:
    """Base for problems written batch-first: ``step`` is ``step_batch`` on a batch of one.

    Subclasses implement ``step_batch`` on a tensor state; the single step then needs no
    second implementation that could drift from the batched one.
    """

    def step_batch(self, u: torch.Tensor, t_start: torch.Tensor, t_stop: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step(self, u: torch.Tensor, t_start: float, t_stop: float) -> torch.Tensor:
        t0 = torch.tensor([t_start], dtype=torch.float64)
        t1 = torch.tensor([t_stop], dtype=torch.float64)
        return self.step_batch(u.unsqueeze(0), t0, t1)[0]
