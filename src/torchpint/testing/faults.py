"""Deliberate failures, to show that runs stop, resume and restart cleanly.

:class:`FaultyProblem` wraps a time-stepping problem (``solve --inject-fault``, the engine's
tests): after some steps it returns NaN or kills its process.  For training:

``nan:EPOCH:STEP`` makes the loss NaN at that step (the non-finite stop); ``kill:EPOCH:STEP[:RANK]``
SIGKILLs that rank as the step begins (a crashed worker; default rank 1).  EPOCH and STEP count
from 1, as the progress lines do.  Under torchrun a kill fires once per job (a counter in the
job store, which outlives the attempt), so that an elastic restart can finish the run.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import torch
from torch import Tensor

from torchpint.engine.problem import Problem, step_batch
from torchpint.engine.state import State, tree_map
from torchpint.errors import ConfigError

__all__ = ["FaultyProblem", "TrainingFault", "parse_training_fault"]


@dataclass(frozen=True)
class TrainingFault:
    """A :class:`~torchpint.run.loop.StepHooks`: one fault at one step (epoch and step 0-based here)."""

    kind: str  # "nan" or "kill"
    epoch: int
    step: int
    rank: int = 1

    def on_loss(self, loss: Tensor, epoch: int, step: int) -> Tensor:
        if self.kind == "nan" and (epoch, step) == (self.epoch, self.step):
            return loss * float("nan")
        return loss

    def on_step(self, rank: int, epoch: int, step: int) -> None:
        if self.kind == "kill" and rank == self.rank and (epoch, step) == (self.epoch, self.step) and _first_time():
            os.kill(os.getpid(), signal.SIGKILL)


def _first_time() -> bool:
    """True the first time in this torchrun job (always outside torchrun)."""
    from torchpint.run.launch import job_store

    store = job_store()
    return store is None or int(store.add("torchpint/testing/kill", 1)) == 1


def parse_training_fault(text: str | None) -> TrainingFault | None:
    """``nan:EPOCH:STEP`` or ``kill:EPOCH:STEP[:RANK]`` (1-based) -> :class:`TrainingFault`."""
    if not text:
        return None
    parts = text.split(":")
    try:
        kind, epoch, step = parts[0], int(parts[1]), int(parts[2])
        rank = int(parts[3]) if len(parts) > 3 else 1
    except (IndexError, ValueError):
        raise ConfigError(f"--inject-fault must be nan:EPOCH:STEP or kill:EPOCH:STEP[:RANK], got {text!r}") from None
    if kind not in ("nan", "kill") or epoch < 1 or step < 1:
        raise ConfigError(f"--inject-fault must be nan:EPOCH:STEP or kill:EPOCH:STEP[:RANK] (from 1), got {text!r}")
    return TrainingFault(kind, epoch - 1, step - 1, rank)


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
