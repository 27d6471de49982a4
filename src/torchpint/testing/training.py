"""A harness for multi-process MGRIT training in the tests: solves on every rank, results back to the test.

``train_many(jobs)`` is a worker function for ``run_workers``: it runs every ``(task, options)``
job with :func:`~torchpint.training.train_mgrit` on this rank's process group and hands rank 0's
results back packed; ``unpack`` restores them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torchpint.engine.comm import default_comm
from torchpint.engine.state import leaves
from torchpint.training.problem import TrainingTask
from torchpint.training.solver import MGRITOptions, TrainingResult, train_mgrit


def train_many(jobs: list[tuple[TrainingTask, MGRITOptions]], resume_every: int = 0) -> list[dict[str, Any]] | None:
    """Several solves on this rank; rank 0 returns them packed.

    ``resume_every > 0``: each solve also checkpoints every ``resume_every`` iterations and is
    solved again from its first snapshot; that result is packed under ``"resumed"`` (with the
    snapshot's iteration under ``"resumed_from"``).
    """
    comm = default_comm()
    out = []
    for task, options in jobs:
        snapshots: list[Any] = []
        result = pack(train_mgrit(task, options, comm=comm, checkpoint_every=resume_every,
                                  on_checkpoint=snapshots.append))
        if resume_every > 0:
            result["resumed"] = pack(train_mgrit(task, options, comm=comm, resume=snapshots[0]))
            result["resumed_from"] = snapshots[0].iteration
        out.append(result)
    return out if comm.rank == 0 else None


# Tensors sent through a multiprocessing queue travel as shared-memory handles that die with
# the worker; results therefore cross as numpy arrays (copied by value).
def _to_numpy(x: Any) -> Any:
    if isinstance(x, Tensor):
        return ("__tensor__", x.detach().cpu().numpy().copy())
    if isinstance(x, dict):
        return {k: _to_numpy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_numpy(v) for v in x)
    return x


def _from_numpy(x: Any) -> Any:
    if isinstance(x, tuple) and len(x) == 2 and x[0] == "__tensor__":
        return torch.from_numpy(x[1])
    if isinstance(x, dict):
        return {k: _from_numpy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_from_numpy(v) for v in x)
    return x


def pack(result: TrainingResult) -> dict[str, Any]:
    return {k: _to_numpy(getattr(result, k)) for k in result.__dataclass_fields__}


def unpack(packed: dict[str, Any]) -> TrainingResult:
    fields = TrainingResult.__dataclass_fields__
    return TrainingResult(**{k: _from_numpy(v) for k, v in packed.items() if k in fields})


def assert_same_solve(resumed: TrainingResult, whole: TrainingResult) -> None:
    """A resumed solve is the uninterrupted one: iterations, every residual and every state, bitwise."""
    assert resumed.iterations == whole.iterations and resumed.converged == whole.converged
    assert resumed.residuals == whole.residuals  # including the iterations before the snapshot
    assert resumed.initial_residual == whole.initial_residual
    assert torch.equal(resumed.weights, whole.weights)
    assert all(torch.equal(a, b) for a, b in zip(leaves(resumed.trajectory), leaves(whole.trajectory), strict=True))
