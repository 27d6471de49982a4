"""Parameter and multiply-accumulate counts, for reporting and load balancing.

Parareal splits the blocks into groups; knowing each block's cost lets the
splitter (and the reports) compare groups by work rather than by count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["count_flops", "count_parameters"]

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _macs(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, include_batchnorm: bool) -> int:
    """Multiply-accumulates one call of ``module`` performed."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        kernel = 1
        for k in module.kernel_size:
            kernel *= k
        return output.numel() * (module.in_channels // module.groups) * kernel
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if include_batchnorm and isinstance(module, _BATCHNORMS):
        return inputs[0].numel()  # one scale-and-shift per element once folded
    return 0


def count_flops(module: nn.Module, input_shape: Sequence[int], include_batchnorm: bool = False) -> int:
    """Multiply-accumulates of one forward pass on a single sample.

    ``input_shape`` is the shape of one sample, without the batch dimension.
    Conv1d, Conv2d and Linear are counted (and BatchNorm, one per element,
    if ``include_batchnorm``); activations, pools and additions are not.
    The dry run uses eval mode and no grad, and the module's mode is put
    back afterwards so the count leaves no trace.
    """
    total = 0

    def hook(mod: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        total += _macs(mod, inputs, output, include_batchnorm)

    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    handles: list[RemovableHandle] = [m.register_forward_hook(hook) for m in module.modules()]
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros((1, *input_shape), device=device, dtype=dtype))
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return total
