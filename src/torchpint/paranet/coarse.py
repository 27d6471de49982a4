"""Coarse networks: the cheap maps ``C_j`` that stand in for a whole sub-network.

A coarse network takes a sample of the sub-network's input shape and returns
one of its output shape, channels and resolution included, at a small
fraction of the sub-network's cost.  Two families are shipped:

* ``conv`` (images ``(C, H, W)`` and signals ``(C, L)``): resample to the
  output size (adaptive average pooling, free of parameters), then a narrow
  pre-activation bottleneck ``GN-ReLU-1x1, GN-ReLU-3x3, GN-ReLU-1x1`` added to
  a parameter-free shortcut (the input, its channels zero-padded or cut to
  the output's count, as in ResNet's "option A").  A 1x1 projection would
  cost ``C_in * C_out`` multiply-adds per pixel, most of the coarse
  network's budget, so it is left out.  The last convolution starts at zero,
  so a new coarse network is its shortcut: the residual stream passed on
  unchanged, which is what a stack of residual blocks does to first order.
* ``linear`` (feature vectors ``(D,)``, the MLP case): the same idea with
  linear layers, ``shortcut(x) + W2 ReLU(W1 x)`` with a low rank ``W1``, ``W2``.

The coarse networks normalize with GroupNorm, not BatchNorm: the correction
``C_j(U^{k+1}) - C_j(U^k)`` needs one and the same map applied to two
different batches, and batch statistics would make it two different maps in
training (each call normalized by its own batch) and a third one in
evaluation (running statistics of both mixed) -- a parareal network with
batch-normalized coarse networks trains well and then fails at test time.
GroupNorm normalizes each sample by itself, identically in both modes.

Any callable ``(in_shape, out_shape) -> nn.Module`` can be given instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CoarseFactory", "ConvCoarse", "LinearCoarse", "coarse_factory"]

CoarseFactory = Callable[[tuple[int, ...], tuple[int, ...]], nn.Module]

#: The narrow width is the smaller channel count divided by this, at least ``_MIN_WIDTH``.
DEFAULT_WIDTH_DIVISOR = 8
_MIN_WIDTH = 4


def _narrow(in_features: int, out_features: int, width: int | None) -> int:
    if width is not None:
        if width < 1:
            raise ValueError(f"coarse width must be >= 1, got {width}")
        return width
    return max(_MIN_WIDTH, min(in_features, out_features) // DEFAULT_WIDTH_DIVISOR)


class ConvCoarse(nn.Module):
    """Resample + narrow pre-activation bottleneck + shortcut, for 1-D or 2-D feature maps."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], width: int | None = None) -> None:
        super().__init__()
        if len(in_shape) != len(out_shape) or len(in_shape) not in (2, 3):
            raise ValueError(
                f"conv coarse network needs (C, L) or (C, H, W) shapes of the same rank, got {tuple(in_shape)} -> "
                f"{tuple(out_shape)}; use coarse='linear' or a custom factory"
            )
        dims = len(in_shape) - 1
        conv = nn.Conv1d if dims == 1 else nn.Conv2d

        spatial = math.prod(int(v) for v in out_shape[1:])

        def norm(channels: int) -> nn.Module:
            return _group_norm(channels, spatial)

        c_in, c_out = int(in_shape[0]), int(out_shape[0])
        w = _narrow(c_in, c_out, width)
        self.size: tuple[int, ...] = tuple(int(s) for s in out_shape[1:])
        self.resample = tuple(in_shape[1:]) != self.size
        # when every input size is a multiple of the output size, adaptive pooling averages disjoint
        # windows of that ratio: plain average pooling gives the same values (bitwise), 15-20% faster on CPU
        ratios = [int(i) // o for i, o in zip(in_shape[1:], self.size)]
        exact = all(r * o == int(i) for r, o, i in zip(ratios, self.size, in_shape[1:]))
        self.pool_kernel: tuple[int, ...] | None = tuple(ratios) if self.resample and exact else None
        self.dims = dims
        self.bn1 = norm(c_in)
        self.conv1 = conv(c_in, w, 1, bias=False)
        self.bn2 = norm(w)
        self.conv2 = conv(w, w, 3, padding=1, bias=False)
        self.bn3 = norm(w)
        self.conv3 = conv(w, c_out, 1, bias=False)
        self.c_in, self.c_out = c_in, c_out
        for m in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv3.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``shortcut(x') + bottleneck(x')`` with ``x'`` resampled to the output size."""
        if self.pool_kernel is not None:
            k = self.pool_kernel
            x = F.avg_pool1d(x, k[0]) if self.dims == 1 else F.avg_pool2d(x, (k[0], k[1]))
        elif self.resample:
            if self.dims == 1:
                x = F.adaptive_avg_pool1d(x, self.size[0])
            else:
                x = F.adaptive_avg_pool2d(x, (self.size[0], self.size[1]))
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        if self.c_out > self.c_in:
            pad = [0, 0] * self.dims + [0, self.c_out - self.c_in]
            short = F.pad(x, pad)
        else:
            short = x[:, : self.c_out]
        result: Tensor = short + out
        return result


class LinearCoarse(nn.Module):
    """``shortcut(x) + W2 ReLU(W1 x)`` with a narrow hidden layer, for feature vectors."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], width: int | None = None) -> None:
        super().__init__()
        d_in, d_out = _numel(in_shape), _numel(out_shape)
        w = _narrow(d_in, d_out, width)
        self.out_shape = tuple(int(s) for s in out_shape)
        self.down = nn.Linear(d_in, w)
        self.up = nn.Linear(w, d_out)
        self.shortcut: nn.Module | None = None if d_in == d_out else nn.Linear(d_in, d_out, bias=False)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Flatten, map, reshape to the output shape."""
        flat = x.flatten(1)
        short = flat if self.shortcut is None else self.shortcut(flat)
        out: Tensor = short + self.up(F.relu(self.down(flat)))
        return out.view(x.shape[0], *self.out_shape)


def _group_norm(channels: int, spatial: int) -> nn.Module:
    """GroupNorm with up to 8 groups, each holding at least 2 values per sample (identity if impossible)."""
    for groups in range(min(8, channels), 0, -1):
        if channels % groups == 0 and (channels // groups) * spatial >= 2:
            return nn.GroupNorm(groups, channels)
    return nn.Identity()


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def coarse_factory(family: str | CoarseFactory = "auto", width: int | None = None) -> CoarseFactory:
    """The factory for a family name (``auto``, ``conv``, ``linear``) or the callable itself.

    ``auto`` picks ``conv`` for ``(C, L)`` and ``(C, H, W)`` samples and
    ``linear`` for anything else (feature vectors).
    """
    if callable(family):
        return family
    name = str(family).strip().lower()
    if name == "conv":
        return lambda i, o: ConvCoarse(i, o, width)
    if name == "linear":
        return lambda i, o: LinearCoarse(i, o, width)
    if name == "auto":
        def build(i: tuple[int, ...], o: tuple[int, ...]) -> nn.Module:
            if len(i) == len(o) and len(i) in (2, 3):
                return ConvCoarse(i, o, width)
            return LinearCoarse(i, o, width)

        return build
    raise ValueError(f"unknown coarse network family {family!r}; use 'auto', 'conv', 'linear' or a callable")
