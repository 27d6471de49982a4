"""scikit-learn's 8x8 handwritten digits: a real image set with no download.

It ships inside scikit-learn, so tests and CI can train on real data with
no network; padding or resizing to 32x32 lets the CIFAR networks run on it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from torchpint.data.base import DatasetError, Datasets, make_datasets

__all__ = ["load_digits"]

_SIDE = 8


def load_digits(
    image_size: int = 8,
    channels: int = 1,
    resize: Literal["pad", "bilinear"] = "pad",
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Datasets:
    """Load the 1797 digits as (N, channels, image_size, image_size) images.

    Pixels are scaled to [0, 1], brought to ``image_size`` by centred zero
    padding (the background is 0) or by bilinear resizing, repeated to
    ``channels`` (3 for the VGG/ResNet image models), then standardized
    with train-set statistics.  The split is stratified and fixed by
    ``seed`` so that every run sees the same test set.
    """
    if image_size < _SIDE:
        raise DatasetError(f"digits: image_size must be >= {_SIDE}, got {image_size}")
    if channels < 1:
        raise DatasetError(f"digits: channels must be >= 1, got {channels}")
    if resize not in ("pad", "bilinear"):
        raise DatasetError(f"digits: resize must be 'pad' or 'bilinear', got {resize!r}")
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"digits: test_fraction must be in (0, 1), got {test_fraction}")
    # scikit-learn (and scipy.stats below it) takes ~2 s of CPU to import: only when the digits load,
    # not in every `torchpint` process (the CLI's parser imports this module for every command)
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = _sk_load_digits()
    images = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    if image_size != _SIDE:
        if resize == "pad":
            before = (image_size - _SIDE) // 2
            after = image_size - _SIDE - before
            images = F.pad(images, (before, after, before, after))
        else:
            images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = images.expand(-1, channels, -1, -1).contiguous()
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels.numpy(), random_state=seed
    )
    tr, te = torch.from_numpy(idx_train), torch.from_numpy(idx_test)
    return make_datasets("digits", images[tr], labels[tr], images[te], labels[te], num_classes=10)
