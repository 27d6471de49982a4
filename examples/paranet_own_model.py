"""Your own nn.Sequential CNN as a parareal network: stem convolution and Linear head found, trained on tensors.

    .venv/bin/python examples/paranet_own_model.py

``ParaNet(cnn, 2, ...)`` tears the residual blocks into 2 sub-networks joined by small coarse
networks; the stem convolution and the pooling / Linear head stay whole (detected from the layer
shapes; ``stem=`` / ``head=`` choose them).  With K = N iterations the parareal network computes
the original exactly; with K = 1 it is a new, parallel network that trains like the original.
To train it on several processes: ``torchpint paranet train`` (see docs/parareal-networks.md).
"""

import copy

import torch
from torch import nn

from torchpint.paranet import ParaNet


class Residual(nn.Module):
    """x + conv(relu(bn(conv(relu(bn(x)))))): a pre-activation residual block, shape-preserving."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def make_cnn(classes: int = 4, channels: int = 16, blocks: int = 6) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),  # stem
        *(Residual(channels) for _ in range(blocks)),                                          # blocks
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes),                   # head
    )


def toy_images(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy 16x16 images with a 6x6 square somewhere; the class is the square's pattern."""
    x = 0.3 * torch.randn(n, 1, 16, 16, generator=generator)
    y = torch.randint(0, 4, (n,), generator=generator)
    rows = torch.arange(6)[:, None].expand(6, 6)
    cols = torch.arange(6)[None, :].expand(6, 6)
    patterns = [torch.ones(6, 6), (rows % 2) * 2.0, (cols % 2) * 2.0, ((rows + cols) % 2) * 2.0]
    corners = torch.randint(0, 11, (n, 2), generator=generator)
    for i, (c, (r, col)) in enumerate(zip(y.tolist(), corners.tolist())):
        x[i, 0, r:r + 6, col:col + 6] += patterns[c]
    return x, y


def main() -> None:
    torch.manual_seed(0)
    cnn = make_cnn()

    # K = N = 2: the parareal network is the original network (ParaNet takes the modules over: a copy here)
    exact = ParaNet(copy.deepcopy(cnn), 2, input_shape=(1, 16, 16), iterations=2).eval()
    x = torch.randn(8, 1, 16, 16)
    with torch.no_grad():
        diff = float((exact(x) - cnn.eval()(x)).abs().max())
    print(f"K = N: largest difference from the original network {diff:.1e}")

    # K = 1: the parallel network, trained with any optimizer like any nn.Module
    net = ParaNet(copy.deepcopy(cnn), 2, input_shape=(1, 16, 16), iterations=1)
    print(net.format_info())
    gen = torch.Generator().manual_seed(1)
    x_train, y_train = toy_images(384, gen)
    x_test, y_test = toy_images(256, gen)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(1, 3):
        net.train()
        for i in range(0, len(x_train), 32):
            loss = nn.functional.cross_entropy(net(x_train[i:i + 32]), y_train[i:i + 32])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            accuracy = float((net(x_test).argmax(1) == y_test).float().mean())
        print(f"epoch {epoch}: training loss {loss.item():.3f}, test accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
