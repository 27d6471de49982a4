"""Deliberate failures during training, to show that runs stop, resume and restart cleanly.

``nan:EPOCH:STEP`` makes the loss NaN at that step (the non-finite stop); ``kill:EPOCH:STEP[:RANK]``
SIGKILLs that rank as the step begins (a crashed worker; default rank 1).  EPOCH and STEP count
from 1, as the progress lines do.  Under torchrun a kill fires once per job (a counter in the
job store, which outlives the attempt), so that an elastic restart can finish the run.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from torch import Tensor

from torchpint.errors import ConfigError

__all__ = ["TrainingFault", "parse_training_fault"]


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
