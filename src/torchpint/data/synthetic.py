"""Random inputs and labels, for throughput benchmarks where accuracy is moot."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from torchpint.data.base import DatasetError, Datasets, make_datasets

__all__ = ["synthetic"]


def synthetic(
    shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    n: int = 1024,
    n_test: int | None = None,
    seed: int = 0,
) -> Datasets:
    """``n`` training and ``n_test`` (default n // 5, at least 1) test samples.

    Inputs are standard normal and labels uniform, drawn from a private
    generator seeded with ``seed`` so that benchmarks are repeatable and
    the global RNG is untouched.
    """
    n_test = max(1, n // 5) if n_test is None else n_test
    if n < 1 or n_test < 1 or num_classes < 1 or not shape or min(shape) < 1:
        raise DatasetError(
            f"synthetic: need n, n_test, num_classes and every dim of shape >= 1, "
            f"got n={n}, n_test={n_test}, num_classes={num_classes}, shape={tuple(shape)}"
        )
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n + n_test, *shape), generator=gen)
    y = torch.randint(num_classes, (n + n_test,), generator=gen)
    return make_datasets("synthetic", x[:n], y[:n], x[n:], y[n:], num_classes, standardize=False)
