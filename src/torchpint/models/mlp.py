"""A multilayer perceptron of equal-width layers, the simplest split target.

With ``residual=True`` each block is ``x + ReLU(Linear(x))``, a forward-Euler
step of unit size, which is the textbook case for parareal over depth.
"""

from __future__ import annotations

from torch import Tensor, nn

from torchpint.models.base import SequentialNet

__all__ = ["LinearBlock", "mlp"]


class LinearBlock(nn.Module):
    """``ReLU(Linear(x))``, plus ``x`` when residual."""

    def __init__(self, width: int, residual: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.relu = nn.ReLU()
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        """Apply the layer, adding the input back when residual."""
        out: Tensor = self.relu(self.linear(x))
        return x + out if self.residual else out


def mlp(
    in_features: int, hidden: int = 128, depth: int = 4, num_classes: int = 10, residual: bool = True
) -> SequentialNet:
    """Build stem = flatten+linear(in_features, hidden), ``depth`` blocks, head = linear.

    Inputs of any shape whose trailing dimensions hold ``in_features``
    values are flattened, so images can be fed as they are.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    stem = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden))
    blocks = nn.Sequential(*(LinearBlock(hidden, residual) for _ in range(depth)))
    return SequentialNet(stem=stem, blocks=blocks, head=nn.Linear(hidden, num_classes))
