"""Your own residual function as a layer-parallel ResNet: forward and backward by MGRIT across the layers.

    .venv/bin/python examples/layer_parallel_own_residual.py

``LayerParallel(make_f, L, T, ...)`` builds the network ``x_{k+1} = x_k + h f_k(x_k)`` (h = T / L)
with one fresh ``f_k = make_f()`` per layer, between an opening and a closing layer.  Its forward
pass is an MGRIT solve across the layers, its backward pass an adjoint MGRIT solve; converged,
both equal the serial network's (``to_sequential()``, the same weights) to rounding.  Over
several processes the layers are split between them (``torchpint layer-parallel train --nproc 2``,
docs/layer-parallel.md); here everything runs in this process.
"""

import torch
from torch import nn

from torchpint.layerpar import LayerParallel


class GatedStep(nn.Module):
    """f(x) = tanh(W1 x) * sigmoid(W2 x): any shape-preserving module works."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.value = nn.Linear(width, width)
        self.gate = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.value(x)) * torch.sigmoid(self.gate(x))


def main() -> None:
    torch.manual_seed(0)
    width, layers = 16, 16
    net = LayerParallel(lambda: GatedStep(width), layers, T=2.0, opening=nn.Linear(8, width),
                        closing=nn.Linear(width, 3), levels=3, cf=4, fwd_tol=1e-12, bwd_tol=1e-12).double()
    serial = net.to_sequential()  # shares the weights

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=gen, dtype=torch.float64)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()

    nn.functional.cross_entropy(net(x), y).backward()
    mgrit_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    nn.functional.cross_entropy(serial(x), y).backward()
    worst = max(float((g - p.grad).abs().max() / p.grad.abs().max()) for g, p in zip(mgrit_grads, net.parameters()))
    stats = net.last_stats
    print(f"MGRIT forward {stats['forward']['iterations']} and adjoint {stats['backward']['iterations']} iterations; "
          f"every parameter gradient equals autograd's on the serial network to {worst:.1e} (relative)")

    optimizer = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9)
    for step in range(1, 10):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        if step % 3 == 0:
            print(f"step {step}: loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
