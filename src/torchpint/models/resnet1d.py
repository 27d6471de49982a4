"""A small 1-D convolutional residual network for MNIST-1D signals.

All blocks keep the same channel count and length, so every block is an
equal-shape step ``x + F(x)``: the setting where parareal over depth is
closest to an ODE time-stepper.
"""

from __future__ import annotations

from torch import Tensor, nn

from torchpint.models.base import SequentialNet

__all__ = ["ResBlock1d", "resnet1d"]


class ResBlock1d(nn.Module):
    """Pre-activation basic block: ``x + conv(ReLU(BN(conv(ReLU(BN(x))))))``."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.body = nn.Sequential(
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size, padding=pad, bias=False),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size, padding=pad, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x + F(x)``."""
        out: Tensor = x + self.body(x)
        return out


def resnet1d(
    num_blocks: int = 4,
    num_classes: int = 10,
    in_channels: int = 1,
    in_length: int = 40,
    channels: int = 32,
    kernel_size: int = 3,
) -> SequentialNet:
    """Build a 1-D ResNet for inputs of shape ``(B, in_channels, in_length)``.

    stem = conv to ``channels``; blocks = ``num_blocks`` residual blocks;
    head = BN-ReLU-flatten-linear.  The head flattens instead of pooling
    because in MNIST-1D the position of a feature carries the class.
    """
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd so the length is kept, got {kernel_size}")
    stem = nn.Conv1d(in_channels, channels, kernel_size, padding=kernel_size // 2, bias=False)
    blocks = nn.Sequential(*(ResBlock1d(channels, kernel_size) for _ in range(num_blocks)))
    head = nn.Sequential(
        nn.BatchNorm1d(channels),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(channels * in_length, num_classes),
    )
    return SequentialNet(stem=stem, blocks=blocks, head=head)
