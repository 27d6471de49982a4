"""Data sets as train/test TensorDatasets, loaded offline, plus batch augmentation."""

from torchpint.data.augment import random_crop_flip
from torchpint.data.base import DatasetError, Datasets
from torchpint.data.digits import load_digits
from torchpint.data.files import load_cifar10, load_cifar100, load_mnist, load_svhn, read_idx
from torchpint.data.mnist1d import load_mnist1d
from torchpint.data.registry import dataset_names, load_dataset
from torchpint.data.synthetic import synthetic

__all__ = [
    "DatasetError",
    "Datasets",
    "dataset_names",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "load_mnist1d",
    "load_svhn",
    "random_crop_flip",
    "read_idx",
    "synthetic",
]
