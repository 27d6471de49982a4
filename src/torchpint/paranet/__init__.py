"""Parareal neural networks (methods.md, section 4): tear a deep network into parallel sub-networks.

* :class:`ParaNet` -- the network, in one process (optionally over several devices);
* :class:`ParaNetHub` / :class:`ParaNetWorker` -- the same network over torch.distributed,
  one sub-network per process (see :mod:`torchpint.paranet.distributed` for the design);
* :mod:`torchpint.paranet.train` -- the training loop with exact checkpoint/resume.
"""

from torchpint.paranet.coarse import ConvCoarse, LinearCoarse, coarse_factory
from torchpint.paranet.distributed import ParaNetHub, ParaNetWorker
from torchpint.paranet.net import ParaNet, format_info, ideal_speedup
from torchpint.paranet.split import Balance, balanced_split, block_costs

__all__ = [
    "Balance",
    "ConvCoarse",
    "LinearCoarse",
    "ParaNet",
    "ParaNetHub",
    "ParaNetWorker",
    "balanced_split",
    "block_costs",
    "coarse_factory",
    "format_info",
    "ideal_speedup",
]
