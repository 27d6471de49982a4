"""Pre-activation bottleneck ResNet for CIFAR-sized images.

He et al. 2016, "Identity Mappings in Deep Residual Networks": depth
9n+2, three stages of n bottleneck blocks with 16/32/64 bottleneck
channels (4x that at the block output), stride 2 at the first block of
stages 2 and 3.  ResNet-164 is n=18 and ResNet-1001 is n=111.  Each block is
``x + F(x)`` (or ``P(x) + F(x)`` where the shape changes), which is the
ODE-like step that parareal over depth relies on.
"""

from __future__ import annotations

from torch import Tensor, nn

from torchpint.models.base import SequentialNet

__all__ = ["PreActBottleneck", "preact_resnet", "resnet_blocks_per_stage"]

EXPANSION = 4


def resnet_blocks_per_stage(depth: int) -> int:
    """Return n for a depth of 9n+2, or raise ValueError naming the valid depths."""
    if depth < 11 or (depth - 2) % 9 != 0:
        raise ValueError(
            f"pre-activation bottleneck ResNet depth must be 9n+2 with n >= 1 "
            f"(11, 20, 29, ..., 164, ..., 1001), got {depth}"
        )
    return (depth - 2) // 9


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3(stride), BN-ReLU-conv1x1, plus shortcut.

    When the shape changes, a strided 1x1 projection of the pre-activated
    input is the shortcut (as in the paper's code); otherwise the shortcut
    is the identity.
    """

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * EXPANSION
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``shortcut(x) + F(x)``."""
        pre = self.relu(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        result: Tensor = out + identity
        return result


def preact_resnet(depth: int, num_classes: int = 10, in_channels: int = 3, base_width: int = 16) -> SequentialNet:
    """Build the pre-activation bottleneck ResNet of ``depth`` = 9n+2.

    stem = conv3x3 to ``base_width`` channels; blocks = the 3n bottleneck
    blocks; head = BN-ReLU-global average pool-linear.  ``base_width`` (16
    in the paper) sets the stage widths to 1x/2x/4x of it, so a smaller
    value gives a cheap network with the same depth structure.
    """
    n = resnet_blocks_per_stage(depth)
    if base_width < 1:
        raise ValueError(f"base_width must be >= 1, got {base_width}")
    stem = nn.Conv2d(in_channels, base_width, kernel_size=3, padding=1, bias=False)
    blocks: list[nn.Module] = []
    channels = base_width
    for stage in range(3):
        planes = base_width * 2**stage
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            blocks.append(PreActBottleneck(channels, planes, stride))
            channels = planes * EXPANSION
    head = nn.Sequential(
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, num_classes),
    )
    net = SequentialNet(stem=stem, blocks=nn.Sequential(*blocks), head=head)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net
