"""Reproducible parareal networks and gradients, for the distributed-equals-serial checks.

``gradient_case`` builds the same network and batch in any process from a
small picklable spec; ``distributed_gradients`` (run on every rank with
:func:`torchpint.run.launch.run_workers`) returns each rank's gradients under the
full network's parameter names, to compare with ``serial_gradients``.
With ``replicas = R`` the world holds R parareal networks, each on its
shard of the batch, that average their gradients: every replica's
gradients and step must equal the one-process network's on the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from torchpint.models import build_model
from torchpint.paranet.net import ParaNet

__all__ = [
    "GradientSpec",
    "distributed_gradients",
    "distributed_sgd_step",
    "gradient_case",
    "replica_gradients_and_step",
    "serial_gradients",
    "serial_sgd_step",
]


@dataclass
class GradientSpec:
    """A network, a batch and the parareal options, all fixed by ``seed``."""

    model: str = "resnet20-small"
    model_kw: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] = (3, 8, 8)
    subnets: int = 2
    iterations: int = 1
    batch: int = 4
    seed: int = 0
    num_classes: int = 10
    dtype: str = "float32"


def gradient_case(spec: GradientSpec) -> tuple[ParaNet, Tensor, Tensor]:
    """The parareal network (coarse networks randomized so every gradient is nonzero) and a batch."""
    torch.manual_seed(spec.seed)
    in_channels = spec.input_shape[0]
    model = build_model(spec.model, num_classes=spec.num_classes, in_channels=in_channels, **spec.model_kw)
    net = ParaNet(model, spec.subnets, input_shape=spec.input_shape, iterations=spec.iterations, balance="flops")
    gen = torch.Generator().manual_seed(spec.seed + 1)
    with torch.no_grad():
        for p in net.coarse_nets.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    x = torch.randn((spec.batch, *spec.input_shape), generator=gen)
    y = torch.randint(spec.num_classes, (spec.batch,), generator=gen)
    dtype = getattr(torch, spec.dtype)
    return net.to(dtype), x.to(dtype), y


def serial_gradients(spec: GradientSpec) -> tuple[float, dict[str, Tensor]]:
    """Loss and every parameter's gradient of the one-process parareal network."""
    net, x, y = gradient_case(spec)
    net.train()
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def _shard(spec: GradientSpec, replicas: int) -> tuple[ParaNet, Tensor, Tensor, Any]:
    """This rank's network, its replica's shard of the batch, and its process groups (equal shards: the
    mean of the replicas' mean losses is the mean loss of the whole batch)."""
    from torchpint.paranet.distributed import replica_groups

    if spec.batch % replicas:
        raise ValueError(f"batch {spec.batch} does not split into {replicas} equal shards")
    groups = replica_groups(spec.subnets, replicas)
    net, x, y = gradient_case(spec)
    net.train()
    return net, x.chunk(replicas)[groups.replica], y.chunk(replicas)[groups.replica], groups


def distributed_gradients(specs: list[GradientSpec], replicas: int = 1) -> list[tuple[float, dict[str, Any]]]:
    """On every rank of an initialized process group: loss (hubs) and this rank's gradients, per spec.

    Gradients come back as NumPy arrays (pickled by value: tensors would be
    shared through file descriptors that die with the worker).
    """
    import torch.distributed as dist

    from torchpint.paranet.distributed import ParaNetHub, ParaNetWorker

    results = []
    for spec in specs:
        net, x, y, groups = _shard(spec, replicas)
        if groups.part == 0:
            hub = ParaNetHub(net, groups.network, groups.copies)
            loss = F.cross_entropy(hub(x), y)
            loss.backward()
            hub.wait()
            hub.stop()
            grads = {n: p.grad.numpy().copy() for n, p in hub.named_parameters() if p.grad is not None}
            results.append((loss.item(), grads))
        else:
            worker = ParaNetWorker(net, groups.network, copies=groups.copies)
            worker.serve()
            grads = {n: p.grad.numpy().copy() for n, p in worker.named_parameters() if p.grad is not None}
            results.append((float("nan"), grads))
        dist.barrier()
    return results


def serial_sgd_step(spec: GradientSpec, lr: float) -> dict[str, Tensor]:
    """Every parameter of the one-process parareal network after one plain SGD step."""
    net, x, y = gradient_case(spec)
    net.train()
    F.cross_entropy(net(x), y).backward()
    torch.optim.SGD(net.parameters(), lr=lr).step()
    return {n: p.detach().clone() for n, p in net.named_parameters()}


def distributed_sgd_step(spec: GradientSpec, lr: float, replicas: int = 1) -> dict[str, Any]:
    """On every rank: this rank's parameters (NumPy) after one training pass ``hub(x, lr=lr)`` and SGD step.

    The workers step inside the pass, right after their backward; the hub
    steps its own parameters after ``backward``.  Worker entries also say
    whether the gradients were cleared (``"_cleared"``).
    """
    import torch.distributed as dist

    from torchpint.paranet.distributed import ParaNetHub, ParaNetWorker

    net, x, y, groups = _shard(spec, replicas)
    if groups.part == 0:
        hub = ParaNetHub(net, groups.network, groups.copies)
        opt = torch.optim.SGD(hub.parameters(), lr=lr)
        F.cross_entropy(hub(x, lr=lr), y).backward()
        hub.wait()
        opt.step()
        hub.stop()
        params = dict(hub.named_parameters())
        out: dict[str, Any] = {n: p.detach().numpy().copy() for n, p in params.items()
                               if not n.startswith("fine_subnets.") or n.startswith("fine_subnets.0.")}
    else:
        module = net.fine_subnets[groups.part]
        worker = ParaNetWorker(net, groups.network, optimizer=torch.optim.SGD(module.parameters(), lr=0.0),
                               copies=groups.copies)
        worker.serve()
        out = {n: p.detach().numpy().copy() for n, p in worker.named_parameters()}
        out["_cleared"] = all(p.grad is None for _, p in worker.named_parameters())
    dist.barrier()
    return out


def replica_gradients_and_step(spec: GradientSpec, lr: float, replicas: int) -> tuple[Any, Any]:
    """Both checks above in one set of processes (spawning them is the slow part of a test)."""
    return distributed_gradients([spec], replicas)[0], distributed_sgd_step(spec, lr, replicas)
