"""Deliberate failures, to show that runs stop cleanly (used by the tests and ``--inject-fault``)."""

from __future__ import annotations

import os

import torch

from torchpint.engine.problem import Problem, step_batch
from torchpint.engine.state import State, tree_map


class FaultyProblem:
    """Wraps a problem; after ``after_steps`` steps on ``rank`` it returns NaN or kills the process.

    Args:
        inner: the real problem.
        kind: ``"nan"`` (the step's result becomes NaN) or ``"exit"`` (the process dies at once,
            as a crashed or killed worker would).
        after_steps: how many step applications succeed first (counted on this process).
        rank: the rank that fails (None: every rank).
    """

    def __init__(self, inner: Problem, kind: str, after_steps: int, rank: int | None = None) -> None:
        if kind not in ("nan", "exit"):
            raise ValueError(f"unknown fault kind {kind!r}: use 'nan' or 'exit'")
        self.inner = inner
        self.kind = kind
        self.after_steps = after_steps
        self.rank = rank
        self.count = 0

    def initial_value(self) -> State:
        return self.inner.initial_value()  # type: ignore[attr-defined]

    def _armed(self, n: int) -> bool:
        self.count += n
        mine = self.rank is None or self.rank == int(os.environ.get("RANK", "0"))
        return mine and self.count > self.after_steps

    def _fail(self, out: State) -> State:
        if self.kind == "exit":
            os._exit(17)
        return tree_map(lambda x: torch.full_like(x, float("nan")), out)

    def step(self, u: State, t_start: float, t_stop: float) -> State:
        out = self.inner.step(u, t_start, t_stop)
        return self._fail(out) if self._armed(1) else out

    def step_batch(self, u: State, t_start: torch.Tensor, t_stop: torch.Tensor) -> State:
        out = step_batch(self.inner, u, t_start, t_stop)
        return self._fail(out) if self._armed(int(t_start.numel())) else out
