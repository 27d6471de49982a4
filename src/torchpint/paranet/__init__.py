"""Parareal neural networks (methods.md, section 4): tear a deep network into parallel sub-networks."""

from torchpint.paranet.coarse import ConvCoarse, LinearCoarse, coarse_factory
from torchpint.paranet.net import ParaNet, format_info, ideal_speedup
from torchpint.paranet.split import Balance, balanced_split, block_costs

__all__ = [
    "Balance",
    "ConvCoarse",
    "LinearCoarse",
    "ParaNet",
    "balanced_split",
    "block_costs",
    "coarse_factory",
    "format_info",
    "ideal_speedup",
]
