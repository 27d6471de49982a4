"""Load a data set from a short name, as configs and the command line give it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchpint.data.base import DatasetError, Datasets
from torchpint.data.digits import load_digits
from torchpint.data.files import load_cifar10, load_cifar100, load_mnist, load_svhn
from torchpint.data.mnist1d import load_mnist1d
from torchpint.data.synthetic import synthetic

__all__ = ["DEFAULT_ROOT", "dataset_names", "load_dataset"]

#: Where file-based data sets are looked for when no root is given.
DEFAULT_ROOT = Path("data")

_GENERATED: dict[str, Callable[..., Datasets]] = {
    "digits": load_digits,
    "mnist1d": load_mnist1d,
    "synthetic": synthetic,
}
_FROM_FILES: dict[str, Callable[[str | Path], Datasets]] = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "svhn": load_svhn,
    "mnist": load_mnist,
}


def dataset_names() -> tuple[str, ...]:
    """Names ``load_dataset`` accepts."""
    return tuple(sorted((*_GENERATED, *_FROM_FILES)))


def load_dataset(name: str, root: str | Path | None = None, **kw: Any) -> Datasets:
    """Load data set ``name``; ``kw`` goes to its loader.

    ``root`` is where file-based sets (cifar10, cifar100, svhn, mnist) are
    read from, ``./data`` if not given; the others are generated in memory
    and ignore it, so a caller may pass one root for every name.  Raises DatasetError listing the names for an
    unknown one.
    """
    key = name.strip().lower()
    if key in _FROM_FILES:
        if kw:
            raise DatasetError(f"{key}: unexpected options {sorted(kw)}; only root is accepted")
        return _FROM_FILES[key](DEFAULT_ROOT if root is None else root)
    if key in _GENERATED:
        return _GENERATED[key](**kw)
    raise DatasetError(f"unknown data set {name!r}; known: {', '.join(dataset_names())}")
