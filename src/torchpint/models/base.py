"""The stem/blocks/head shape shared by every network in this package.

Parareal over a network's depth needs to cut the network into a first map
(stem), a chain of blocks that can be split into N contiguous groups, and a
last map (head).  Stating that shape once, as a protocol, lets the splitting
code accept any network that has it, not only the ones built here.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn

__all__ = ["SequentialNet", "StemBlocksHead"]


@runtime_checkable
class StemBlocksHead(Protocol):
    """A network whose forward is ``head(blocks(stem(x)))``.

    ``blocks`` is an ``nn.Sequential`` (or an ``nn.ModuleList`` applied in
    order) so that a parareal splitter may slice it into groups.  The parts
    are read-only properties here so that a class holding them as plain
    attributes, of either container type, satisfies the protocol.
    """

    @property
    def stem(self) -> nn.Module:
        """Map from the input to the first block's state."""
        ...

    @property
    def blocks(self) -> nn.Sequential | nn.ModuleList:
        """The chain of blocks, applied in order."""
        ...

    @property
    def head(self) -> nn.Module:
        """Map from the last block's state to the output (e.g. logits)."""
        ...

    def __call__(self, x: Tensor) -> Tensor: ...


class SequentialNet(nn.Module):
    """Base class: holds stem, blocks and head and runs them in order.

    Kept as a plain ``nn.Module`` (not an ``nn.Sequential`` of three) so that
    the three parts stay named attributes, which is what the protocol and
    the splitting code look for.
    """

    def __init__(self, stem: nn.Module, blocks: nn.Sequential | nn.ModuleList, head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = blocks
        self.head = head

    def forward_blocks(self, x: Tensor) -> Tensor:
        """Apply every block in order (works for Sequential and ModuleList alike)."""
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """Return ``head(blocks(stem(x)))``."""
        out: Tensor = self.head(self.forward_blocks(self.stem(x)))
        return out
