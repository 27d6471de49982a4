"""Serial training references: the same ``Phi`` step by step, and plain ``torch.optim``."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from torchpint.engine.state import State, stack
from torchpint.training.errors import NonFiniteWeightsError
from torchpint.training.problem import LevelProblem, TrainingTask


@dataclass
class SerialResult:
    final: Any  # the final state
    trajectory: State | None  # stacked states of every step (keep="all"), else None
    seconds: float

    @property
    def weights(self) -> Tensor:
        return self.final if isinstance(self.final, Tensor) else self.final["w"]


def serial_train(task: TrainingTask, keep: str = "all") -> SerialResult:
    """Apply the finest level's ``Phi`` N times, one step at a time (what MGRIT must reproduce)."""
    problem = LevelProblem(task, 0, task.update.lr, check_finite=True)
    state = task.initial_state()
    states = [state] if keep == "all" else None
    problem.step(state, 0.0, 1.0)  # warm-up (the first autograd call of a process is slow)
    start = time.perf_counter()
    for i in range(task.steps):
        state = problem.step(state, float(i), float(i + 1))
        if states is not None:
            states.append(state)
    seconds = time.perf_counter() - start
    return SerialResult(state, stack(states) if states is not None else None, seconds)


def torch_optim_train(task: TrainingTask, keep: str = "last") -> SerialResult:
    """Ordinary training: ``loss.backward(); optimizer.step()`` with ``torch.optim`` on the same batches."""
    model = copy.deepcopy(task.model)
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    optimizer = task.update.to_torch(params)
    flat = lambda: torch.cat([p.detach().reshape(-1) for p in params]).clone()
    weights = [flat()] if keep == "all" else None
    warm = copy.deepcopy(model)  # warm-up on a copy: the first backward of a process is slow
    x, y = task.schedule.batch(0)
    task.loss_fn(warm(x), y).backward()
    start = time.perf_counter()
    for i in range(task.steps):
        x, y = task.schedule.batch(i)
        optimizer.zero_grad(set_to_none=True)
        loss = task.loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        if weights is not None:
            weights.append(flat())
        elif not torch.isfinite(params[0]).all():
            raise NonFiniteWeightsError(f"torch.optim training: NaN/Inf weights at step {i + 1}", step=i + 1, level=0)
    seconds = time.perf_counter() - start
    final = flat()
    return SerialResult(final, torch.stack(weights) if weights is not None else None, seconds)
