"""MNIST-1D, generated locally by the ``mnist1d`` package.

MNIST-1D (Greydanus 2020) is small enough to train in seconds yet hard
enough to separate models.  Only the package's generator is used, never
its download function, so loading works offline and is reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from torchpint.data.base import DatasetError, Datasets, make_datasets

__all__ = ["load_mnist1d"]


def load_mnist1d(num_samples: int = 5000, seed: int = 42, train_split: float = 0.8) -> Datasets:
    """Generate MNIST-1D as (N, 1, 40) signals with 10 classes.

    The defaults are the package's own (5000 samples, seed 42, 80/20
    split), which reproduce the published data set.  The generator seeds
    NumPy's and Python's global random state; both are saved and put back
    so that loading leaves no trace on the caller's randomness.  The
    generator already centres and scales the signals, so no further
    standardization is applied.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:
        raise DatasetError(
            "mnist1d: the 'mnist1d' package (and its dependency 'requests') is needed: pip install mnist1d requests"
        ) from err
    if num_samples < 10:
        raise DatasetError(f"mnist1d: num_samples must be >= 10 (one per class), got {num_samples}")
    if not 0.0 < train_split < 1.0:
        raise DatasetError(f"mnist1d: train_split must be in (0, 1), got {train_split}")
    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    args.train_split = train_split
    data = _without_global_seed_side_effects(make_dataset, args)
    x_train = torch.from_numpy(np.asarray(data["x"], dtype=np.float32)).unsqueeze(1)
    x_test = torch.from_numpy(np.asarray(data["x_test"], dtype=np.float32)).unsqueeze(1)
    y_train = torch.from_numpy(np.asarray(data["y"], dtype=np.int64))
    y_test = torch.from_numpy(np.asarray(data["y_test"], dtype=np.int64))
    return make_datasets("mnist1d", x_train, y_train, x_test, y_test, num_classes=10, standardize=False)


def _without_global_seed_side_effects(make: Callable[[Any], dict[str, Any]], args: Any) -> dict[str, Any]:
    """Call ``make(args)`` and restore NumPy's and Python's global RNG states."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        return make(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
