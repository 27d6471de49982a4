"""The container every loader returns, its error type, and normalization."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from torchpint.errors import ConfigError

__all__ = ["DatasetError", "Datasets", "channel_stats", "make_datasets", "normalize"]


class DatasetError(ConfigError):
    """A data set could not be loaded: unknown name, missing or corrupt file.

    A ValueError subclass so callers that validate arguments generically
    still catch it, while data problems can be told apart.
    """


@dataclass(frozen=True)
class Datasets:
    """Train and test splits plus what a model needs to be built for them.

    Inputs are float32 and labels int64, so any loader's output can go to
    any model and loss without conversion.  ``mean``/``std`` are the
    per-channel statistics the inputs were standardized with (empty when
    the loader did not standardize), kept so images can be shown again.
    """

    name: str
    train: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


def channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of ``x`` shaped (N, C, ...); std is floored at 1e-8."""
    dims = [d for d in range(x.dim()) if d != 1]
    std, mean = torch.std_mean(x.to(torch.float32), dim=dims)
    return mean, std.clamp_min(1e-8)


def normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Standardize ``x`` (N, C, ...) in place with per-channel statistics and return it."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return x.sub_(mean.view(shape)).div_(std.view(shape))


def make_datasets(
    name: str,
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    num_classes: int,
    standardize: bool = True,
) -> Datasets:
    """Cast, optionally standardize with train-set statistics, and wrap.

    Statistics come from the training split only so that nothing about the
    test split leaks into training.  Float32 inputs are standardized in
    place (loaders hand over fresh tensors; this spares a second copy of a
    CIFAR-sized array).
    """
    x_train = x_train.to(torch.float32)
    x_test = x_test.to(torch.float32)
    mean_t: tuple[float, ...] = ()
    std_t: tuple[float, ...] = ()
    if standardize:
        mean, std = channel_stats(x_train)
        normalize(x_train, mean, std)
        normalize(x_test, mean, std)
        mean_t, std_t = tuple(mean.tolist()), tuple(std.tolist())
    return Datasets(
        name=name,
        train=TensorDataset(x_train, y_train.to(torch.int64)),
        test=TensorDataset(x_test, y_test.to(torch.int64)),
        num_classes=num_classes,
        input_shape=tuple(x_train.shape[1:]),
        mean=mean_t,
        std=std_t,
    )
