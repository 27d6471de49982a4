"""Generated and bundled data sets, the registry, and augmentation."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from torchpint.data import (
    DatasetError,
    dataset_names,
    load_dataset,
    load_digits,
    load_mnist1d,
    random_crop_flip,
    synthetic,
)


def test_digits_default() -> None:
    ds = load_digits()
    x, y = ds.train.tensors
    xt, yt = ds.test.tensors
    assert len(ds.train) + len(ds.test) == 1797
    assert len(ds.test) == 360  # ceil(0.2 * 1797)
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert ds.num_classes == 10 and ds.input_shape == (1, 8, 8)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3
    # stratified: every class keeps about its share in the test split
    counts = torch.bincount(yt, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37


@pytest.mark.parametrize("resize", ["pad", "bilinear"])
def test_digits_32_rgb(resize: str) -> None:
    ds = load_digits(image_size=32, channels=3, resize=resize)
    x = ds.train.tensors[0]
    assert x.shape[1:] == (3, 32, 32)
    torch.testing.assert_close(x[:, 0], x[:, 2])
    if resize == "pad":  # the padded border is all background
        assert torch.all(x[:, :, :12, :] == x[0, 0, 0, 0])


def test_digits_split_is_deterministic() -> None:
    a, b, c = load_digits(seed=1), load_digits(seed=1), load_digits(seed=2)
    assert torch.equal(a.test.tensors[1], b.test.tensors[1])
    assert not torch.equal(a.test.tensors[1], c.test.tensors[1])


def test_digits_bad_args() -> None:
    with pytest.raises(DatasetError, match="image_size"):
        load_digits(image_size=4)


def test_synthetic() -> None:
    ds = synthetic((2, 5), num_classes=3, n=20, seed=7)
    assert ds.train.tensors[0].shape == (20, 2, 5) and ds.test.tensors[0].shape == (4, 2, 5)
    assert int(ds.train.tensors[1].max()) < 3
    again = synthetic((2, 5), num_classes=3, n=20, seed=7)
    assert torch.equal(ds.train.tensors[0], again.train.tensors[0])
    with pytest.raises(DatasetError):
        synthetic((0, 3))


def test_mnist1d() -> None:
    pytest.importorskip("mnist1d")
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    ds = load_mnist1d(num_samples=200, seed=3)
    assert np.array_equal(np.random.get_state()[1], np_state) and random.getstate() == py_state
    assert ds.train.tensors[0].shape == (160, 1, 40) and ds.test.tensors[0].shape == (40, 1, 40)
    assert ds.train.tensors[0].dtype == torch.float32 and ds.train.tensors[1].dtype == torch.int64
    assert ds.num_classes == 10 and ds.input_shape == (1, 40)
    assert torch.equal(load_mnist1d(num_samples=200, seed=3).test.tensors[0], ds.test.tensors[0])


def test_registry() -> None:
    assert set(dataset_names()) == {"digits", "mnist1d", "synthetic", "cifar10", "cifar100", "svhn", "mnist"}
    assert load_dataset("synthetic", shape=(3,), n=10).input_shape == (3,)
    assert load_dataset("digits", root="ignored").name == "digits"
    with pytest.raises(DatasetError, match="known: .*cifar10"):
        load_dataset("imagenet")


def test_augmentation_deterministic_and_shape() -> None:
    x = torch.randn(16, 3, 32, 32)
    a = random_crop_flip(x, torch.Generator().manual_seed(5))
    b = random_crop_flip(x, torch.Generator().manual_seed(5))
    c = random_crop_flip(x, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augmentation_is_a_crop_of_the_padded_image() -> None:
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    out = random_crop_flip(x, torch.Generator().manual_seed(0), padding=2, flip=False)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, r : r + 6, c : c + 6] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    flipped = random_crop_flip(x, torch.Generator().manual_seed(0), padding=0)
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))
    assert random_crop_flip(x, torch.Generator(), padding=0, flip=False) is not x
