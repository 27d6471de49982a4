"""Wall-clock time per phase of a solve (relaxation, restriction, coarse solve, ...)."""

from __future__ import annotations

import time
from collections import defaultdict


class _Phase:
    """The context of one named phase; reused, since a solve enters the same phases thousands of times.

    A class with ``__enter__``/``__exit__`` instead of ``@contextmanager``: a generator-based
    context costs about 1.5 us per use, which added up to a visible share of the bookkeeping
    (the step phase alone is entered 50-100 times per iteration).  Nested entries of the same
    phase (never done by the engine) are still counted correctly: each keeps its own start.
    """

    __slots__ = ("name", "seconds", "starts")

    def __init__(self, name: str, seconds: dict[str, float]) -> None:
        self.name = name
        self.seconds = seconds
        self.starts: list[float] = []

    def __enter__(self) -> None:
        self.starts.append(time.perf_counter())

    def __exit__(self, *exc: object) -> None:
        self.seconds[self.name] += time.perf_counter() - self.starts.pop()


class PhaseTimer:
    """Accumulates seconds per named phase; nested phases are counted in each."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._phases: dict[str, _Phase] = {}

    def phase(self, name: str) -> _Phase:
        context = self._phases.get(name)
        if context is None:
            context = self._phases[name] = _Phase(name, self.seconds)
        return context

    def active(self) -> tuple[str, ...]:
        """The phases entered and not yet left (a replayed operation is counted in each)."""
        return tuple(name for name, context in self._phases.items() if context.starts)

    def as_dict(self) -> dict[str, float]:
        return dict(self.seconds)
