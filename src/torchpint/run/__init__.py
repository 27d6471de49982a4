"""How torchpint runs an experiment: launching, run folders, checkpoints, the training loop, the report.

* :mod:`torchpint.run.launch`: :func:`launch` (one process, N supervised local processes, or a
  torchrun world), :func:`world_size` (checked before anything starts), :func:`run_workers`.
* :mod:`torchpint.run.folder`: :func:`open_run_folder` (no overwrite without ``--overwrite``,
  ``--resume`` needs a run, a lock against two runs, elastic restarts resume by themselves).
* :mod:`torchpint.run.checkpoint`: :class:`Checkpoints`, the one checkpoint format (atomic per-rank
  parts, a commit pointer, RNG states, configuration; only ``weights_only`` loads).
* :mod:`torchpint.run.loop`: :func:`train_epochs`, the one training loop, over an
  :class:`EpochTrainer`.
* :mod:`torchpint.run.report`: JSON/CSV (atomic), plots, summary lines, the ``--json`` line, and
  what ``seconds`` and accuracy mean everywhere.
* :mod:`torchpint.run.fit`: :func:`fit`, the loop and checkpoints for your own model and DataLoader.
"""

from torchpint.run.checkpoint import CheckpointError, Checkpoints, Found, check_config, rng_state, set_rng_state
from torchpint.run.fit import fit
from torchpint.run.folder import RunFolder, open_run_folder
from torchpint.run.launch import Interrupted, WorkerError, launch, launched_by_torchrun, run_workers, world_size
from torchpint.run.loop import EpochTrainer, LoopResult, NonFiniteLossError, check_finite, train_epochs
from torchpint.run.report import print_json_line, write_csv, write_json, write_text

__all__ = [
    "CheckpointError",
    "Checkpoints",
    "EpochTrainer",
    "Found",
    "Interrupted",
    "LoopResult",
    "NonFiniteLossError",
    "RunFolder",
    "WorkerError",
    "check_config",
    "check_finite",
    "fit",
    "launch",
    "launched_by_torchrun",
    "open_run_folder",
    "print_json_line",
    "rng_state",
    "run_workers",
    "set_rng_state",
    "train_epochs",
    "world_size",
    "write_csv",
    "write_json",
    "write_text",
]
