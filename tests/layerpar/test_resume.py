"""Layer-parallel training checkpoints every epoch; --resume continues exactly."""

import dataclasses

import numpy as np
import pytest

from torchpint.run.launch import run_workers
from torchpint.engine.mgrit import ConfigError
from torchpint.layerpar.train import LayerParallelConfig, train_worker

BASE = LayerParallelConfig(arch="mlp", width=6, layers=8, levels=2, cf=2, epochs=2, batch=128, progress=False, nproc=2)


def test_resume_continues_exactly(tmp_path) -> None:
    whole = run_workers(train_worker, 2, (dataclasses.replace(BASE, checkpoint_dir=str(tmp_path / "a")),))[0]
    first = dataclasses.replace(BASE, epochs=1, checkpoint_dir=str(tmp_path / "b"))
    run_workers(train_worker, 2, (first,))
    resumed = run_workers(train_worker, 2, (dataclasses.replace(first, epochs=2, resume=True),))[0]
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["batch_losses"] == whole["batch_losses"]
    for name, value in whole["state"].items():
        assert np.array_equal(resumed["state"][name], value), name


def test_resume_without_checkpoint_is_a_clear_error(tmp_path) -> None:
    config = dataclasses.replace(BASE, nproc=1, checkpoint_dir=str(tmp_path / "none"), resume=True)
    with pytest.raises(ConfigError, match="nothing to resume"):
        train_worker(config)
