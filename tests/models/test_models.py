"""Shapes, structure and counts of the networks in torchpint.models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchpint.models import (
    SequentialNet,
    StemBlocksHead,
    build_model,
    count_flops,
    count_parameters,
    mlp,
    model_names,
    preact_resnet,
    resnet1d,
    vgg16,
)


def _composed(net: StemBlocksHead, x: torch.Tensor) -> torch.Tensor:
    return net.head(net.blocks(net.stem(x)))


CASES = [
    (lambda: vgg16(num_classes=10, width=8), (2, 3, 32, 32), 10),
    (lambda: vgg16(num_classes=7, in_channels=1, batch_norm=False, width=8), (2, 1, 32, 32), 7),
    (lambda: preact_resnet(11, num_classes=10, base_width=4), (2, 3, 32, 32), 10),
    (lambda: preact_resnet(20, num_classes=100, base_width=4), (2, 3, 32, 32), 100),
    (lambda: resnet1d(num_blocks=3, channels=8), (2, 1, 40), 10),
    (lambda: mlp(64, hidden=16, depth=3, num_classes=10), (2, 1, 8, 8), 10),
    (lambda: mlp(64, hidden=16, depth=3, num_classes=10, residual=False), (2, 64), 10),
]


@pytest.mark.parametrize(("make", "shape", "classes"), CASES)
def test_forward_shape_and_composition(make, shape, classes) -> None:
    torch.manual_seed(0)
    net = make().eval()
    assert isinstance(net, StemBlocksHead)
    assert isinstance(net, SequentialNet)
    x = torch.randn(*shape)
    with torch.no_grad():
        out = net(x)
        assert out.shape == (shape[0], classes)
        torch.testing.assert_close(_composed(net, x), out)


def test_vgg16_structure() -> None:
    net = vgg16(width=8)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    pools = [m for m in net.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(convs) == 13 and len(pools) == 5
    assert len(net.blocks) == 12
    assert isinstance(net.stem[0], nn.Conv2d)
    assert 14_700_000 < count_parameters(vgg16()) < 14_750_000  # the usual 14.7M of CIFAR VGG-16-BN


@pytest.mark.parametrize("depth", [0, 2, 10, 12, 21, 165, -7])
def test_resnet_depth_validation(depth: int) -> None:
    with pytest.raises(ValueError, match="9n\\+2"):
        preact_resnet(depth)


def test_resnet164_blocks_and_params() -> None:
    net = preact_resnet(164)
    assert len(net.blocks) == 3 * 18
    assert 1_650_000 < count_parameters(net) < 1_750_000  # the paper's 1.7M


def test_resnet_downsampling() -> None:
    net = preact_resnet(20, base_width=4).eval()
    x = torch.randn(1, 3, 32, 32)
    shapes = []
    with torch.no_grad():
        h = net.stem(x)
        for block in net.blocks:
            h = block(h)
            shapes.append(tuple(h.shape[1:]))
    assert shapes == [(16, 32, 32)] * 2 + [(32, 16, 16)] * 2 + [(64, 8, 8)] * 2


def test_equal_width_blocks_keep_shape() -> None:
    for net, x in ((resnet1d(num_blocks=2, channels=4), torch.randn(3, 1, 40)), (mlp(5, 6, 2, 3), torch.randn(3, 5))):
        h = net.stem(x)
        for block in net.blocks:
            assert block(h).shape == h.shape


def test_count_flops_linear_and_conv() -> None:
    assert count_flops(nn.Linear(20, 7), (20,)) == 20 * 7
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1, stride=2)
    assert count_flops(conv, (3, 16, 16)) == 8 * 8 * 8 * 3 * 9
    grouped = nn.Conv1d(4, 6, kernel_size=5, groups=2)
    assert count_flops(grouped, (4, 20)) == 6 * 16 * 2 * 5
    bn = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    assert count_flops(bn, (1, 4, 4)) == 2 * 16
    assert count_flops(bn, (1, 4, 4), include_batchnorm=True) == 2 * 16 * 2


def test_count_flops_restores_mode() -> None:
    net = mlp(4, 8, 2, 3)
    net.train()
    assert count_flops(net, (4,)) == 4 * 8 + 2 * 8 * 8 + 8 * 3
    assert net.training


def test_count_parameters_trainable_only() -> None:
    net = nn.Linear(3, 2)
    net.bias.requires_grad_(False)
    assert count_parameters(net) == 8
    assert count_parameters(net, trainable_only=True) == 6


@pytest.mark.parametrize(
    ("name", "kw", "shape", "blocks"),
    [
        ("vgg16-small", {}, (1, 3, 32, 32), 12),
        ("resnet11-small", {}, (1, 3, 32, 32), 3),
        ("resnet-20-small", {}, (1, 3, 32, 32), 6),
        ("resnet20", {"base_width": 2}, (1, 3, 32, 32), 6),
        ("resnet1d", {"channels": 4, "num_blocks": 5}, (1, 1, 40), 5),
        ("mlp", {"in_features": 40, "hidden": 8, "depth": 2}, (1, 1, 40), 2),
    ],
)
def test_build_model(name: str, kw: dict, shape: tuple[int, ...], blocks: int) -> None:
    net = build_model(name, num_classes=5, in_channels=shape[1], **kw).eval()
    assert len(net.blocks) == blocks
    with torch.no_grad():
        assert net(torch.randn(*shape)).shape == (1, 5)


def test_build_model_known_names() -> None:
    names = model_names()
    for expected in ("vgg16", "vgg16-small", "resnet164", "resnet1001", "resnet20-small", "resnet1d", "mlp"):
        assert expected in names
    assert len(build_model("resnet164").blocks) == 54


def test_build_model_errors() -> None:
    with pytest.raises(ValueError, match="known: .*vgg16"):
        build_model("alexnet")
    with pytest.raises(ValueError, match="9n\\+2"):
        build_model("resnet21")
    with pytest.raises(ValueError, match="in_features"):
        build_model("mlp")
