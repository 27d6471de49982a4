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
from torchpint.training.problem import TrainingTask
from torchpint.training.solver import MGRITOptions, TrainingResult, train_mgrit


def train_many(jobs: list[tuple[TrainingTask, MGRITOptions]]) -> list[dict[str, Any]] | None:
    """Several solves on this rank; rank 0 returns them packed."""
    comm = default_comm()
    out = [pack(train_mgrit(task, options, comm=comm)) for task, options in jobs]
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
    return TrainingResult(**{k: _from_numpy(v) for k, v in packed.items()})


def interrupted_and_whole(task: TrainingTask, options: MGRITOptions, every: int) -> dict[str, Any]:
    """On this rank: the uninterrupted solve (snapshots every ``every`` iterations), then the solve
    resumed from the first snapshot; rank 0 returns both packed, and the snapshot's iteration."""
    comm = default_comm()
    snapshots: list[Any] = []
    whole = train_mgrit(task, options, comm=comm, checkpoint_every=every, on_checkpoint=snapshots.append)
    resumed = train_mgrit(task, options, comm=comm, resume=snapshots[0])
    if comm.rank != 0:
        return {}
    return {"whole": pack(whole), "resumed": pack(resumed), "from": snapshots[0].iteration,
            "snapshots": [s.iteration for s in snapshots]}
