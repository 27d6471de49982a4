"""The run folder under torchrun, where every rank is a launcher: rank 0 decides, every rank learns it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.distributed as dist

from torchpint.errors import ConfigError
from torchpint.run.folder import RunFolder, open_run_folder

__all__ = ["open_run_folder_on_ranks"]


def open_run_folder_on_ranks(path: str | Path, *, resume: bool, overwrite: bool,
                             record: dict[str, Any] | None = None) -> tuple[RunFolder | None, bool]:
    """:func:`open_run_folder` on rank 0 of the default process group; collective (every rank calls it).

    A refusal there is raised on every rank (the same one line, so every rank exits 2 and none
    waits for a peer that gave up), and every rank learns whether the run resumes (an elastic
    restart resumes by itself).  Returns ``(the folder, held on rank 0; None elsewhere, resume)``.
    Without a process group (one process) it is :func:`open_run_folder`.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        folder = open_run_folder(path, resume=resume, overwrite=overwrite, record=record)
        return folder, folder.resume
    folder = None
    message: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            folder = open_run_folder(path, resume=resume, overwrite=overwrite, record=record)
            message = [("ok", folder.resume)]
        except ConfigError as error:
            message = [("refused", str(error))]
    dist.broadcast_object_list(message, src=0)
    status, value = message[0]
    if status == "refused":
        raise ConfigError(value)
    return folder, bool(value)
