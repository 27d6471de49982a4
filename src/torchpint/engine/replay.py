"""Replaying an MGRIT iteration: the same work, without the Python that decides it.

From its second iteration on, an MGRIT cycle does the same things every iteration: the same
steps on the same views of the same storage, the same messages, the same array operations
into the same scratch.  What it costs beyond that work is Python deciding it again: layout
arithmetic, views, which rank sends what (about 1,700 Python calls per iteration for a
5-level V-cycle, 0.6-1 ms; on a rank of a time-parallel solve, which adds its halos, twice
that).  So the engine records the side effects of one iteration and replays them:

* a call into the problem (a step) or into the comm (a message) is one *opaque* operation:
  recorded as the call itself, replayed by calling it again with the same arguments (the
  problem runs its own code each time, whatever it is); a call that returns a state (a
  received halo, a step into new storage) is replayed into the state it returned then;
* a torch operation of the engine's own is recorded when it writes (in place or ``out=``)
  or when it makes a new tensor (replayed into that tensor); views are not replayed: the
  ones made while recording stay valid, since every replay writes into the same storage;
* a read of a tensor's value by the engine (``float``, ``item``, ``bool``, ``numpy``, ...)
  would make the iteration's course depend on its data, and a state that requires grad would
  need autograd to record each operation anew: the recording is then refused and the solve
  goes on without replaying.

The replay is bitwise the iteration it replays (the same operations on the same data in the
same order); each operation keeps the phases it ran in, so ``phase_seconds`` still says
where the time goes.  Temporaries that an iteration allocates stay allocated (the plan holds
them): in the steady state the engine allocates none (it steps into its own storage and
reuses scratch), so this is a few states at most.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from torchpint.engine.state import State, tree_map
from torchpint.engine.timing import PhaseTimer

Op = Callable[[], Any]

# Reading a value out of a tensor: what follows may depend on it, so the iteration cannot be replayed.
_READS = frozenset({
    "item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__", "__complex__",
    "__array__", "__repr__", "__str__", "__format__", "__iter__", "equal", "allclose",
})
# In-place operators whose names do not end in an underscore.
_IN_PLACE = frozenset({
    "__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__",
    "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__",
})
# New tensors whose contents are undefined until written: nothing to redo.
_UNINITIALISED = frozenset({"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided"})


class Refused(Exception):
    """The iteration cannot be replayed (the message says why)."""


def _storages(values: Any) -> set[int]:
    found = set()
    for leaf in tree_flatten(values)[0]:
        if isinstance(leaf, torch.Tensor):
            found.add(leaf.untyped_storage().data_ptr())
    return found


class IterationRecorder(TorchFunctionMode):
    """Records what one iteration does, as :class:`Plan` operations (see the module note).

    Used as a context around the iteration; :class:`~torchpint.engine.level.Level` hands its
    calls into the problem and the comm to :meth:`call`.
    """

    def __init__(self, timer: PhaseTimer) -> None:
        super().__init__()
        self.timer = timer
        self.ops: list[tuple[tuple[str, ...], Op]] = []
        self.refused: str | None = None

    def _add(self, op: Op) -> None:
        self.ops.append((self.timer.active(), op))

    # ------------------------------------------------------------------ the engine's torch operations
    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if isinstance(result, torch.Tensor) and result._is_view() and not (name.endswith("_") or "out" in kwargs):
            return result  # (most of them: slicing)
        if name in _READS:
            self.refused = self.refused or f"the engine read a tensor's value ({name})"
        elif _grad(result):
            self.refused = self.refused or "a state requires grad (autograd records each operation anew)"
        elif "out" in kwargs or name in _IN_PLACE or (name.endswith("_") and not name.startswith("__")):
            self._add(_call(func, args, kwargs))
        elif name not in _UNINITIALISED:
            produced = result if isinstance(result, (tuple, list)) else (result,)
            fresh = [t for t in produced if isinstance(t, torch.Tensor) and not t._is_view()]
            if fresh:
                inputs = _storages((args, kwargs))
                fresh = [t for t in fresh if t.untyped_storage().data_ptr() not in inputs]
            if fresh:
                self._add(_redo_into(result, func, args, kwargs))
        return result

    # ------------------------------------------------------------------ calls into the problem and the comm
    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (a step or a message) now, and record it as one operation.

        Its result may be None, a bool (replayed calls must return the same) or a state
        (replayed into the one returned now).
        """
        # The problem's and the comm's own torch operations are theirs: the recorder steps out of
        # the way (leaving any torch-function handling of their own as it is).
        self.__exit__(None, None, None)
        try:
            result = fn()
        finally:
            self.__enter__()
        if _grad(result):
            self.refused = self.refused or "a state requires grad (autograd records each operation anew)"
        if result is None:
            self._add(fn)
        elif isinstance(result, bool):
            self._add(_expect(fn, result))
        elif all(isinstance(leaf, torch.Tensor) for leaf in tree_flatten(result)[0]):
            self._add(_into(result, fn))  # a state
        else:
            self.refused = self.refused or f"a call returned a {type(result).__name__}"
        return result

    def post(self, fn: Callable[[], Any]) -> Slot:
        """Run ``fn`` (posting a receive) now and on every replay; its pending receive is in the slot."""
        slot = Slot()

        def post() -> None:
            slot.pending = fn()

        self.call(post)
        return slot

    def plan(self, steps: list[int]) -> Plan:
        if self.refused is not None:
            raise Refused(self.refused)
        return Plan(self.ops, steps)


class Slot:
    """Where a replayed receive keeps its pending message between posting and waiting."""

    pending: Any = None

    def wait(self) -> State:
        return self.pending.wait()


def _grad(result: Any) -> bool:
    if isinstance(result, torch.Tensor):
        return result.requires_grad
    return isinstance(result, (tuple, list, dict)) and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in tree_flatten(result)[0])


def _call(func: Callable[..., Any], args: tuple, kwargs: dict) -> Op:
    return lambda: func(*args, **kwargs)


def _redo_into(result: Any, func: Callable[..., Any], args: tuple, kwargs: dict) -> Op:
    targets = tree_flatten(result)[0]

    def redo() -> None:
        for target, value in zip(targets, tree_flatten(func(*args, **kwargs))[0]):
            if isinstance(target, torch.Tensor):
                target.copy_(value)

    return redo


def _expect(fn: Callable[[], Any], expected: bool) -> Op:
    def check() -> None:
        if fn() is not expected:
            raise RuntimeError("a replayed call returned another answer than when it was recorded")

    return check


def _into(result: State, fn: Callable[[], State]) -> Op:
    return lambda: tree_map(torch.Tensor.copy_, result, fn())


class Plan:
    """The recorded operations of one iteration, replayed in order; counts steps and phase times as it goes."""

    def __init__(self, ops: list[tuple[tuple[str, ...], Op]], steps: list[int]) -> None:
        # Consecutive operations of the same phases form one segment: one clock reading each.
        self.segments: list[tuple[tuple[str, ...], list[Op]]] = []
        for phases, op in ops:
            if self.segments and self.segments[-1][0] == phases:
                self.segments[-1][1].append(op)
            else:
                self.segments.append((phases, [op]))
        self.steps = steps  # per level, per iteration
        self.size = len(ops)

    def replay(self, timer: PhaseTimer, levels: list[Any]) -> None:
        seconds = timer.seconds
        for phases, ops in self.segments:
            start = time.perf_counter()
            for op in ops:
                op()
            elapsed = time.perf_counter() - start
            for name in phases:
                seconds[name] += elapsed
        for level, steps in zip(levels, self.steps):
            level.steps_taken += steps
