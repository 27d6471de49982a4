"""Readers of the distributed file formats, on tiny fake files written here."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from torchpint.data import (
    DatasetError,
    load_cifar10,
    load_cifar100,
    load_dataset,
    load_mnist,
    load_svhn,
    read_idx,
)

RNG = np.random.default_rng(0)


def _images(n: int, shape: tuple[int, ...]) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _check_standardized(x: torch.Tensor) -> None:
    assert x.dtype == torch.float32
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-4, rtol=0)
    torch.testing.assert_close(std, torch.ones_like(std), atol=1e-3, rtol=0)


def _roundtrip(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Undo the standardization and the /255 to get the original uint8 images back."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return torch.round((x * s + m) * 255).to(torch.uint8).numpy()


def _write_cifar10(root: Path, n: int = 3) -> tuple[list[np.ndarray], list[list[int]]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = _images(n, (3072,))
        y = [int(v) for v in RNG.integers(0, 10, size=n)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": b"fake", b"data": x, b"labels": y}, f, protocol=2)
        data.append(x)
        labels.append(y)
    return data, labels


def test_cifar10_roundtrip(tmp_path: Path) -> None:
    data, labels = _write_cifar10(tmp_path)
    ds = load_cifar10(tmp_path)
    x_train, y_train = ds.train.tensors
    x_test, y_test = ds.test.tensors
    assert x_train.shape == (15, 3, 32, 32) and x_test.shape == (3, 3, 32, 32)
    assert ds.num_classes == 10 and ds.input_shape == (3, 32, 32) and ds.name == "cifar10"
    assert y_train.dtype == torch.int64 and y_train.tolist() == sum(labels[:5], [])
    assert y_test.tolist() == labels[5]
    _check_standardized(x_train)
    expected = np.concatenate(data[:5]).reshape(-1, 3, 32, 32)
    np.testing.assert_array_equal(_roundtrip(x_train, ds.mean, ds.std), expected)
    np.testing.assert_array_equal(_roundtrip(x_test, ds.mean, ds.std), data[5].reshape(-1, 3, 32, 32))
    # The folder itself may be given as root, and the registry finds it too.
    assert len(load_cifar10(tmp_path / "cifar-10-batches-py").train) == 15
    assert len(load_dataset("CIFAR10", root=tmp_path).test) == 3


def test_cifar100_roundtrip(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 5), ("test", 2)):
        batch = {b"data": _images(n, (3072,)), b"fine_labels": [99, 0, 42, 7, 1][:n], b"coarse_labels": [0] * n}
        (folder / name).write_bytes(pickle.dumps(batch))
    ds = load_cifar100(tmp_path)
    assert ds.num_classes == 100
    assert ds.train.tensors[0].shape == (5, 3, 32, 32)
    assert ds.train.tensors[1].tolist() == [99, 0, 42, 7, 1]
    assert ds.test.tensors[1].tolist() == [99, 0]


def test_svhn_roundtrip(tmp_path: Path) -> None:
    x_train = _images(4, (32, 32, 3)).transpose(1, 2, 3, 0)  # stored as (32, 32, 3, N)
    y_train = np.array([[10], [1], [5], [10]], dtype=np.uint8)
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": x_train, "y": y_train})
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x_train[..., :2], "y": y_train[:2]})
    ds = load_svhn(tmp_path)
    assert ds.train.tensors[1].tolist() == [0, 1, 5, 0]
    assert ds.test.tensors[0].shape == (2, 3, 32, 32)
    expected = x_train.transpose(3, 2, 0, 1)
    np.testing.assert_array_equal(_roundtrip(ds.train.tensors[0], ds.mean, ds.std), expected)


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_roundtrip(tmp_path: Path, compress: bool) -> None:
    folder = tmp_path / "MNIST" / "raw"
    folder.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": _images(6, (28, 28)),
        "train-labels-idx1-ubyte": np.array([0, 1, 2, 3, 9, 5]),
        "t10k-images-idx3-ubyte": _images(2, (28, 28)),
        "t10k-labels-idx1-ubyte": np.array([7, 8]),
    }
    for name, array in arrays.items():
        raw = _idx(array)
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    ds = load_mnist(tmp_path)
    assert ds.input_shape == (1, 28, 28)
    assert ds.train.tensors[1].tolist() == [0, 1, 2, 3, 9, 5]
    assert ds.test.tensors[1].tolist() == [7, 8]
    _check_standardized(ds.train.tensors[0])
    restored = _roundtrip(ds.train.tensors[0], ds.mean, ds.std)
    np.testing.assert_array_equal(restored[:, 0], arrays["train-images-idx3-ubyte"])


def test_read_idx_rejects_bad_header(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_bytes(b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00" * 4)  # float type
    with pytest.raises(ValueError, match="magic"):
        read_idx(path)
    path.write_bytes(_idx(np.zeros((2, 3)))[:-1])
    with pytest.raises(ValueError, match="holds 5 bytes"):
        read_idx(path)


@pytest.mark.parametrize(
    ("loader", "layout"),
    [
        (load_cifar10, "cifar-10-batches-py/{data_batch_1"),
        (load_cifar100, "cifar-100-python/{train, test}"),
        (load_svhn, "train_32x32.mat"),
        (load_mnist, "train-images-idx3-ubyte"),
    ],
)
def test_missing_files_name_layout(tmp_path: Path, loader, layout: str) -> None:
    with pytest.raises(DatasetError, match="files not found") as info:
        loader(tmp_path)
    assert layout in str(info.value)


def test_corrupt_cifar_pickle(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="data_batch_3.*cifar-10-batches-py"):
        load_cifar10(tmp_path)


def test_cifar_pickle_with_wrong_content(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"data": _images(2, (3072,))}))  # no labels
    with pytest.raises(DatasetError, match="test_batch"):
        load_cifar10(tmp_path)
    path.write_bytes(pickle.dumps({b"data": _images(2, (3072,)), b"labels": [1]}))
    with pytest.raises(DatasetError, match="labels do not match"):
        load_cifar10(tmp_path)


def test_cifar_pickle_refuses_code(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"data": Path("x"), b"labels": []}))
    with pytest.raises(DatasetError, match="refusing"):
        load_cifar10(tmp_path)


def test_corrupt_svhn_and_mnist(tmp_path: Path) -> None:
    (tmp_path / "train_32x32.mat").write_bytes(b"garbage" * 20)
    (tmp_path / "test_32x32.mat").write_bytes(b"garbage" * 20)
    with pytest.raises(DatasetError, match="train_32x32.mat"):
        load_svhn(tmp_path)
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        (tmp_path / name).write_bytes(_idx(np.zeros((1, 28, 28))))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(np.zeros(1)))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b broken gzip")
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz.*expected"):
        load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.zeros(3)))
    with pytest.raises(DatasetError, match="do not match"):
        load_mnist(tmp_path)
