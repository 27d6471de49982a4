"""Readers for CIFAR-10, CIFAR-100, SVHN and MNIST in their distributed formats.

Nothing is downloaded: the files must already be on disk, laid out as the
official archives unpack (which is also torchvision's layout).  Every
missing or unreadable file raises DatasetError naming the layout expected,
so a user can fix the directory without reading this code.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch
from numpy.typing import NDArray

from torchpint.data.base import DatasetError, Datasets, make_datasets

__all__ = ["load_cifar10", "load_cifar100", "load_mnist", "load_svhn", "read_idx"]

_CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_CIFAR10_LAYOUT = (
    "<root>/cifar-10-batches-py/{data_batch_1, ..., data_batch_5, test_batch} (from cifar-10-python.tar.gz)"
)
_CIFAR100_LAYOUT = "<root>/cifar-100-python/{train, test} (from cifar-100-python.tar.gz)"
_SVHN_LAYOUT = "<root>/train_32x32.mat and <root>/test_32x32.mat (or under <root>/svhn/)"
_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_MNIST_LAYOUT = (
    "<root>/{train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte}, each optionally .gz (or under <root>/MNIST/raw/ or <root>/mnist/)"
)

#: What a corrupt file can raise while being parsed; all become DatasetError.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    pickle.UnpicklingError,
    zlib.error,
    struct.error,
    KeyError,
    IndexError,
    TypeError,
    ValueError,
    AttributeError,
    scipy.io.matlab.MatReadError,
)

#: The only globals a CIFAR pickle needs; anything else is refused, since
#: unpickling an arbitrary file could otherwise run arbitrary code.
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds dicts, lists and NumPy arrays and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _find_dir(root: Path, subdirs: tuple[str, ...], names: tuple[str, ...], what: str, layout: str) -> Path:
    """First of ``root/subdir`` (each) or ``root`` holding every name (or name.gz)."""
    for folder in (*(root / s for s in subdirs), root):
        if all(_plain_or_gz(folder / n).is_file() for n in names):
            return folder
    raise DatasetError(f"{what}: files not found under {root}; expected {layout}")


def _plain_or_gz(path: Path) -> Path:
    """``path.gz`` if only that exists, else ``path``."""
    gz = path.with_name(path.name + ".gz")
    return gz if gz.is_file() and not path.is_file() else path


def _corrupt(what: str, path: Path, layout: str, reason: object) -> DatasetError:
    return DatasetError(f"{what}: cannot read {path} ({reason}); expected {layout}")


def _unpickle(path: Path, what: str, layout: str) -> dict[bytes, Any]:
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except _READ_ERRORS as err:
        raise _corrupt(what, path, layout, err) from err
    if not isinstance(obj, dict):
        raise _corrupt(what, path, layout, f"expected a dict, got {type(obj).__name__}")
    return obj


def _cifar_batch(
    path: Path, label_key: bytes, num_classes: int, what: str, layout: str
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) from one CIFAR pickle."""
    batch = _unpickle(path, what, layout)
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
    except _READ_ERRORS as err:
        raise _corrupt(what, path, layout, f"bad or missing {err}") from err
    if len(labels) != len(data) or (labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        raise _corrupt(what, path, layout, "labels do not match the images")
    return data, labels


def _from_uint8(
    name: str, train: tuple[NDArray[Any], NDArray[Any]], test: tuple[NDArray[Any], NDArray[Any]], num_classes: int
) -> Datasets:
    """Scale uint8 images to [0, 1], standardize per channel, wrap."""
    x_train = torch.from_numpy(train[0]).to(torch.float32).div_(255.0)
    x_test = torch.from_numpy(test[0]).to(torch.float32).div_(255.0)
    return make_datasets(name, x_train, torch.from_numpy(train[1]), x_test, torch.from_numpy(test[1]), num_classes)


def load_cifar10(root: str | Path) -> Datasets:
    """CIFAR-10 from the python pickles: 50000 train, 10000 test, 3x32x32."""
    what = "cifar10"
    folder = _find_dir(Path(root), ("cifar-10-batches-py",), _CIFAR10_FILES, what, _CIFAR10_LAYOUT)
    parts = [_cifar_batch(folder / n, b"labels", 10, what, _CIFAR10_LAYOUT) for n in _CIFAR10_FILES]
    train = (np.concatenate([p[0] for p in parts[:5]]), np.concatenate([p[1] for p in parts[:5]]))
    return _from_uint8(what, train, parts[5], num_classes=10)


def load_cifar100(root: str | Path) -> Datasets:
    """CIFAR-100 from the python pickles, with the 100 fine labels."""
    what = "cifar100"
    folder = _find_dir(Path(root), ("cifar-100-python",), ("train", "test"), what, _CIFAR100_LAYOUT)
    train = _cifar_batch(folder / "train", b"fine_labels", 100, what, _CIFAR100_LAYOUT)
    test = _cifar_batch(folder / "test", b"fine_labels", 100, what, _CIFAR100_LAYOUT)
    return _from_uint8(what, train, test, num_classes=100)


def _svhn_split(path: Path) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Images (N, 3, 32, 32) and labels (N,) from one SVHN .mat; label 10 is digit 0."""
    try:
        mat = scipy.io.loadmat(str(path))
        x = np.asarray(mat["X"], dtype=np.uint8)
        y = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    except _READ_ERRORS as err:
        raise _corrupt("svhn", path, _SVHN_LAYOUT, err) from err
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise _corrupt("svhn", path, _SVHN_LAYOUT, f"X has shape {x.shape}, y has {len(y)} labels")
    if y.size and (y.min() < 0 or y.max() > 10):
        raise _corrupt("svhn", path, _SVHN_LAYOUT, "labels outside 0..10")
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), np.where(y == 10, 0, y)


def load_svhn(root: str | Path) -> Datasets:
    """SVHN cropped digits (format 2) from train_32x32.mat and test_32x32.mat."""
    folder = _find_dir(Path(root), ("svhn",), ("train_32x32.mat", "test_32x32.mat"), "svhn", _SVHN_LAYOUT)
    return _from_uint8("svhn", _svhn_split(folder / "train_32x32.mat"), _svhn_split(folder / "test_32x32.mat"), 10)


def read_idx(path: Path) -> NDArray[np.uint8]:
    """Parse an unsigned-byte IDX file (gzip-compressed or not) into an array.

    Format: two zero bytes, type code 0x08, number of dims, each dim as a
    big-endian uint32, then the data in C order.
    """
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise ValueError("not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"IDX header says {dims} but holds {data.size} bytes")
    return data.reshape(dims).copy()  # frombuffer is read-only; torch wants writable


def _read_idx_or_raise(path: Path) -> NDArray[np.uint8]:
    try:
        return read_idx(path)
    except _READ_ERRORS as err:
        raise _corrupt("mnist", path, _MNIST_LAYOUT, err) from err


def _mnist_split(folder: Path, prefix: str) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Images (N, 1, 28, 28) and labels (N,) of the split whose files start with ``prefix``."""
    images_path = _plain_or_gz(folder / f"{prefix}-images-idx3-ubyte")
    labels_path = _plain_or_gz(folder / f"{prefix}-labels-idx1-ubyte")
    images, labels = _read_idx_or_raise(images_path), _read_idx_or_raise(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or (labels.size and labels.max() > 9):
        raise _corrupt("mnist", images_path, _MNIST_LAYOUT, f"images {images.shape} do not match labels {labels.shape}")
    return images[:, None], labels.astype(np.int64)


def load_mnist(root: str | Path) -> Datasets:
    """MNIST from the four IDX files: 60000 train, 10000 test, 1x28x28."""
    folder = _find_dir(Path(root), ("MNIST/raw", "mnist"), _MNIST_FILES, "mnist", _MNIST_LAYOUT)
    return _from_uint8("mnist", _mnist_split(folder, "train"), _mnist_split(folder, "t10k"), 10)
