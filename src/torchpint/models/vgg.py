"""VGG-16 for 32x32 images, cut into one block per convolution.

One conv(-BN)-ReLU per block gives the finest split parareal can use; a
max-pool is folded into the block it follows so that no block is a bare
pool.  The first convolution is the stem and the 12 others are the blocks.
"""

from __future__ import annotations

from torch import nn

from torchpint.models.base import SequentialNet

__all__ = ["VGG16_CONFIG", "vgg16"]

#: Output channels of the 13 convolutions at width 64; ``"M"`` is a 2x2 max-pool.
VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, "M",
    512, 512, 512, "M",
    512, 512, 512, "M",
)  # fmt: skip


def _conv_unit(in_channels: int, out_channels: int, batch_norm: bool, pool: bool) -> nn.Sequential:
    """conv3x3 [-BN] -ReLU [-maxpool]; the conv has no bias when BN follows it."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    if pool:
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def vgg16(num_classes: int = 10, in_channels: int = 3, batch_norm: bool = True, width: int = 64) -> SequentialNet:
    """Build VGG-16 (13 convolutions, 5 max-pools, one linear layer) for 32x32 inputs.

    ``width`` is the channel count of the first convolution (64 in the
    paper); all others scale with it, so ``width=8`` gives a tiny network
    for tests.  The head averages whatever spatial size is left (1x1 for
    32x32 inputs) so that larger inputs still work.
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    units: list[nn.Sequential] = []
    channels = in_channels
    for i, item in enumerate(VGG16_CONFIG):
        if item == "M":
            continue
        out = max(1, int(item) * width // 64)
        pool = i + 1 < len(VGG16_CONFIG) and VGG16_CONFIG[i + 1] == "M"
        units.append(_conv_unit(channels, out, batch_norm, pool))
        channels = out
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
    net = SequentialNet(stem=units[0], blocks=nn.Sequential(*units[1:]), head=head)
    _init_weights(net)
    return net


def _init_weights(net: nn.Module) -> None:
    """He init for convolutions (ReLU follows them), unit BN, zero biases."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
