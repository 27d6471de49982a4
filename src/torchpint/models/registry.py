"""Build a model from a short name, as configs and the command line give it."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from torchpint.models.base import SequentialNet
from torchpint.models.mlp import mlp
from torchpint.models.resnet import preact_resnet
from torchpint.models.resnet1d import resnet1d
from torchpint.models.vgg import vgg16

__all__ = ["build_model", "model_names"]

#: ``width`` of the "-small" VGG and ``base_width`` of the "-small" ResNets.
SMALL_VGG_WIDTH = 8
SMALL_RESNET_WIDTH = 4

_RESNET = re.compile(r"resnet-?(\d+)(-small)?")

_Builder = Callable[..., SequentialNet]


def _vgg(width: int) -> _Builder:
    def build(num_classes: int, in_channels: int, **kw: Any) -> SequentialNet:
        return vgg16(num_classes=num_classes, in_channels=in_channels, **{"width": width, **kw})

    return build


def _resnet1d(num_classes: int, in_channels: int, **kw: Any) -> SequentialNet:
    return resnet1d(num_classes=num_classes, in_channels=in_channels, **kw)


def _mlp(num_classes: int, in_channels: int, **kw: Any) -> SequentialNet:
    if "in_features" not in kw:
        raise ValueError("model 'mlp' needs in_features=<number of input values per sample>")
    return mlp(num_classes=num_classes, **kw)


_FIXED: dict[str, _Builder] = {
    "vgg16": _vgg(64),
    "vgg16-small": _vgg(SMALL_VGG_WIDTH),
    "resnet1d": _resnet1d,
    "mlp": _mlp,
}

_RESNET_EXAMPLES = ("resnet164", "resnet1001", "resnet11-small", "resnet20-small")


def model_names() -> tuple[str, ...]:
    """Names ``build_model`` accepts; any ``resnet-<9n+2>[-small]`` works too."""
    return tuple(sorted((*_FIXED, *_RESNET_EXAMPLES)))


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, **kw: Any) -> SequentialNet:
    """Build the network called ``name``; ``kw`` goes to its constructor.

    ResNets are named ``resnet<depth>`` or ``resnet-<depth>`` for any depth
    9n+2, with a ``-small`` suffix for a narrow variant (base width 4).
    Raises ValueError listing the known names for anything else.
    """
    key = name.strip().lower()
    if key in _FIXED:
        return _FIXED[key](num_classes, in_channels, **kw)
    match = _RESNET.fullmatch(key)
    if match is not None:
        width = SMALL_RESNET_WIDTH if match.group(2) else 16
        kw = {"base_width": width, **kw}
        return preact_resnet(int(match.group(1)), num_classes=num_classes, in_channels=in_channels, **kw)
    known = ", ".join(model_names())
    raise ValueError(f"unknown model {name!r}; known: {known}, or resnet-<depth>[-small] with depth = 9n+2")
