"""CIFAR-style augmentation on whole batches, in torch only.

Working on a batch tensor (rather than per PIL image) keeps augmentation
on the training device and needs no torchvision; an explicit
``torch.Generator`` makes it reproducible without touching global seeds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["random_crop_flip"]


def random_crop_flip(
    x: Tensor,
    generator: torch.Generator,
    padding: int = 4,
    flip: bool = True,
    fill: float = 0.0,
) -> Tensor:
    """Pad each image of ``x`` (B, C, H, W) by ``padding``, crop back at random, flip at random.

    Each sample gets its own crop offset and a horizontal flip with
    probability 1/2, both drawn from ``generator``.  Padding uses ``fill``
    (0 for standardized data means padding with the mean pixel).  Returns
    a new tensor of the same shape, dtype and device.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a batch shaped (B, C, H, W), got {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, _, h, w = x.shape
    gen_device = generator.device
    out = x
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding), value=fill)
        offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=gen_device).to(x.device)
        rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (B, H)
        cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (B, W)
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        out = padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        mask = torch.rand(b, generator=generator, device=gen_device).to(x.device) < 0.5
        out = torch.where(mask[:, None, None, None], out.flip(-1), out)
    return out if out is not x else x.clone()
