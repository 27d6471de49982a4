"""Check a layer-parallel network against its serial equivalent (a harness for the tests and the demo).

``parallel_gradients(cases)`` runs on every rank (e.g. spawned by
:func:`torchpint.run.launch.run_workers`): it builds each small network, runs one forward and one
backward pass layer-parallel and returns the output, the input gradient (rank 0) and the
gradient of every parameter this rank owns, by name.  ``serial_gradients(case)`` computes the
same with plain autograd on ``to_sequential()`` in one process; ``max_relative_difference``
compares them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchpint.layerpar.layout import batch_shard, layer_data_comms
from torchpint.layerpar.network import LayerParallel, NonFiniteActivationError
from torchpint.layerpar.train import LayerParallelConfig, train_layer_parallel, write_outputs


@dataclass
class CheckCase:
    layers: int = 8
    levels: int = 2
    cf: int = 2
    relax: str = "FCF"
    cycle: str = "V"
    nested: bool = True
    tol: float = 1e-13
    max_iter: int = 60
    arch: str = "mlp"  # "mlp" (Linear + tanh) or "conv" (3x3 conv + tanh)
    width: int = 5
    batch: int = 4
    T: float = 1.0
    seed: int = 0
    final_relax: bool = True
    warm_start: bool = False
    warm_up_batch: int = 0  # > 0: a pass on another batch of this size first (a warm start's source)


def build_check_network(case: CheckCase, comm: Any = None, data_comm: Any = None) -> LayerParallel:
    """A small float64 network, the same on every rank for a given seed."""
    torch.manual_seed(case.seed)
    w = case.width
    if case.arch == "mlp":
        factory = lambda: nn.Sequential(nn.Linear(w, w), nn.Tanh())
        opening: nn.Module = nn.Linear(3, w)
        closing: nn.Module = nn.Linear(w, 2)
    elif case.arch == "conv":
        factory = lambda: nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.Tanh())
        opening = nn.Conv2d(1, w, 3, padding=1)
        closing = nn.Sequential(nn.Flatten(), nn.Linear(w * 16, 2))
    else:
        raise ValueError(f"unknown arch {case.arch!r}")
    net = LayerParallel(
        factory, case.layers, case.T, opening=opening, closing=closing, levels=case.levels, cf=case.cf,
        relax=case.relax, cycle=case.cycle, nested=case.nested, fwd_tol=case.tol, bwd_tol=case.tol,
        fwd_max_iter=case.max_iter, bwd_max_iter=case.max_iter, final_relax=case.final_relax,
        warm_start=case.warm_start, comm=comm, data_comm=data_comm,
    )
    return net.double()


def check_data(case: CheckCase, batch: int | None = None, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    batch = case.batch if batch is None else batch
    gen = torch.Generator().manual_seed(case.seed + seed)
    shape = (batch, 3) if case.arch == "mlp" else (batch, 1, 4, 4)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    y = torch.randn(batch, 2, generator=gen, dtype=torch.float64)
    return x, y


def _loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).sum() + out.sin().sum()


def serial_gradients(case: CheckCase) -> dict[str, Any]:
    """Output, input gradient and every parameter gradient of the serial network (autograd)."""
    net = build_check_network(case)
    seq = net.to_sequential()
    x, y = check_data(case)
    x.requires_grad_(True)
    out = seq(x)
    _loss(out, y).backward()
    assert x.grad is not None
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return {"out": out.detach(), "x_grad": x.grad.clone(), "grads": grads}


def parallel_gradients(cases: list[CheckCase]) -> list[dict[str, Any]]:
    """The same, layer-parallel on this rank (call on every rank); only owned gradients are returned."""
    results = []
    for case in cases:
        net = build_check_network(case)
        warm_up = None
        if case.warm_up_batch:
            x0, y0 = check_data(case, case.warm_up_batch, seed=2)
            _loss(net(x0 if net.rank == 0 else None), y0).backward()
            warm_up = dict(net.last_stats)
            net.zero_grad(set_to_none=True)
        x, y = check_data(case)
        x.requires_grad_(True)
        out = net(x if net.rank == 0 else None)
        _loss(out, y).backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
        owned = {id(p) for p in net.local_parameters()}
        foreign = [n for n, p in net.named_parameters() if p.grad is not None and id(p) not in owned]
        # numpy, not tensors: results cross process boundaries (torch would share file descriptors)
        results.append({
            "case": asdict(case),
            "rank": net.rank,
            "owned_layers": list(net.owned_layers),
            "out": out.detach().numpy(),
            "x_grad": x.grad.numpy() if (net.rank == 0 and x.grad is not None) else None,
            "grads": {n: g.numpy() for n, g in grads.items()},
            "foreign_grads": foreign,
            "stats": net.last_stats,
            "warm_up_stats": warm_up,
        })
    return results


def layer_data_gradients(cases: list[CheckCase], data_parallel: int) -> list[dict[str, Any]]:
    """Layer x data parallelism on this rank (call on every rank of the world): each data group runs
    the network on its shard of the batch, then the copies of each layer average their gradients.

    Returns this rank's data group, its shard's output and input gradient (its layer rank 0) and
    the (whole batch's) gradients of the parameters it owns."""
    layer_comm, data_comm = layer_data_comms(data_parallel)
    results = []
    for case in cases:
        net = build_check_network(case, layer_comm, data_comm)
        x, y = check_data(case)
        x_shard, _ = batch_shard(x, data_comm)
        y_shard, _ = batch_shard(y, data_comm)
        x_shard = x_shard.clone().requires_grad_(True)
        out = net(x_shard if net.rank == 0 else None)
        _loss(out, y_shard).backward()
        net.average_gradients(weight=1.0)  # a sum loss: the whole batch's gradient is the sum of the shards'
        owned = {id(p) for p in net.local_parameters()}
        results.append({
            "data_group": data_comm.rank,
            "rank": net.rank,
            "out": out.detach().numpy(),
            "x_grad": x_shard.grad.numpy() if (net.rank == 0 and x_shard.grad is not None) else None,
            "grads": {n: p.grad.numpy().copy() for n, p in net.named_parameters() if id(p) in owned and p.grad is not None},
            "foreign_grads": [n for n, p in net.named_parameters() if p.grad is not None and id(p) not in owned],
        })
    return results


def nonfinite_errors(cases: list[tuple[CheckCase, str, int]]) -> list[dict[str, Any]]:
    """Provoke NaN on purpose: ``(case, "layer", k)`` poisons layer ``k``'s weights, ``(case, "loss", 0)``
    the loss, ``(case, "input", 0)`` the input.  Returns each rank's error message and layer."""
    out = []
    for case, what, k in cases:
        net = build_check_network(case)
        x, y = check_data(case)
        if what == "layer":
            with torch.no_grad():
                next(net.layers[k].parameters()).fill_(float("nan"))
        elif what == "input":
            x[0, 0] = float("inf")
        try:
            loss = _loss(net(x if net.rank == 0 else None), y)
            if what == "loss":
                loss = loss * float("nan")
            loss.backward()
        except NonFiniteActivationError as error:
            out.append({"message": str(error), "layer": error.layer, "phase": error.phase})
        else:
            out.append({"message": None, "layer": None, "phase": None})
    return out


def check_worker(cases: list[CheckCase], poisoned: list[tuple[CheckCase, str, int]]) -> dict[str, Any]:
    """Gradient checks and provoked non-finite errors, in one process group (one start-up)."""
    return {"grads": parallel_gradients(cases), "errors": nonfinite_errors(poisoned)}


def max_relative_difference(a: Any, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|`` (the error relative to the tensor's scale)."""
    a = torch.as_tensor(a)
    scale = float(b.abs().max()) if b.numel() else 0.0
    return float((a - b).abs().max()) / max(scale, 1e-300) if a.numel() else 0.0


def compare(parallel_ranks: list[list[dict[str, Any]]], serial: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per case: the worst relative differences over ranks, and which gradients were covered."""
    out = []
    for c, ref in enumerate(serial):
        merged: dict[str, torch.Tensor] = {}
        out_diff = 0.0
        x_diff = None
        foreign: list[str] = []
        for rank_results in parallel_ranks:
            res = rank_results[c]
            out_diff = max(out_diff, max_relative_difference(res["out"], ref["out"]))
            if res["x_grad"] is not None:
                x_diff = max_relative_difference(res["x_grad"], ref["x_grad"])
            for name, g in res["grads"].items():
                if name in merged:
                    raise AssertionError(f"gradient of {name} on two ranks")
                merged[name] = g
            foreign += res["foreign_grads"]
        missing = sorted(set(ref["grads"]) - set(merged))
        grad_diff = max(max_relative_difference(merged[n], ref["grads"][n]) for n in merged)
        out.append({"out": out_diff, "x_grad": x_diff, "grads": grad_diff, "missing": missing, "foreign": foreign,
                    "count": len(merged)})
    return out


def demo_worker(cases: list[Any], config: LayerParallelConfig, out: str) -> dict[str, Any]:
    """The demo's work on one rank, in one process group: gradient checks, then training (run folder
    ``out``); rank 0 writes the run's files and returns their summary."""
    checks = parallel_gradients(cases)
    result = train_layer_parallel(config, out, resume=False)
    return {"checks": checks, "train": None if result is None else write_outputs(result, Path(out))}
