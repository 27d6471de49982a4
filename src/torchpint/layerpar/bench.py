"""Timing a layer-parallel forward+backward pass against serial autograd (benchmarks/bench_layer_parallel.py).

The network is the one torchbraid was timed with in issue 12: ``x_{k+1} = x_k + h tanh(W_k x_k +
b_k)`` (no opening or closing layer), 64 layers, width 128, batch 128, float32, ``T = 1``; MGRIT
with cf 4, FCF relaxation, V-cycles, no nested iteration and a zero initial guess.  One timed
pass is ``y = net(x); y.backward(g)`` with fixed ``x`` and ``g`` (plus, with data groups, the
gradient all-reduce); the median of ``repeat`` passes after one warm-up.  Every rank times the
same passes between barriers, so rank 0's time is the job's; each rank's CPU time per pass is
recorded too (its share of the work, less sensitive to other load on the machine).

Next to the time: the largest output difference from the serial network (same weights, same
input), the iterations, the layer steps per level, and where the time went (the engine's
phases: steps, relaxation, coarse solve, residual, messages; and the last sweep).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from torchpint.layerpar.layout import batch_shard, layer_data_comms
from torchpint.layerpar.network import LayerParallel


@dataclass
class BenchSpec:
    layers: int = 64
    width: int = 128
    batch: int = 128
    T: float = 1.0
    dtype: str = "float32"
    levels: int = 3
    cf: int = 4
    relax: str = "FCF"
    cycle: str = "V"
    nested: bool = False
    max_iter: int = 2  # forward and backward
    tol: float = 0.0  # 0: exactly max_iter iterations
    final_relax: bool = True
    warm_start: bool = False
    mode: str = "layer-parallel"  # or "serial" (plain autograd on to_sequential(), one process)
    data_parallel: int = 1
    repeat: int = 5
    seed: int = 0
    device: str = "cpu"

    def label(self) -> str:
        if self.mode == "serial":
            return "serial autograd"
        if self.levels == 1:
            return "1 level (exact pass)"
        if self.tol > 0:
            return f"{self.levels} levels, to tolerance {self.tol:g}"
        return f"{self.levels} levels, {self.max_iter} iterations forward and backward"


def build(spec: BenchSpec, comm: Any = None, data_comm: Any = None) -> LayerParallel:
    torch.manual_seed(spec.seed)
    w = spec.width
    net = LayerParallel(
        lambda: nn.Sequential(nn.Linear(w, w), nn.Tanh()), spec.layers, spec.T, levels=spec.levels, cf=spec.cf,
        relax=spec.relax, cycle=spec.cycle, nested=spec.nested, fwd_max_iter=spec.max_iter, bwd_max_iter=spec.max_iter,
        fwd_tol=spec.tol, bwd_tol=spec.tol, final_relax=spec.final_relax, warm_start=spec.warm_start, comm=comm,
        data_comm=data_comm,
    )
    return net.to(device=spec.device, dtype=getattr(torch, spec.dtype))


def bench_input(spec: BenchSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole batch's input ``x`` and output gradient ``g`` (the same on every rank)."""
    gen = torch.Generator().manual_seed(spec.seed + 1)
    dtype = getattr(torch, spec.dtype)
    x = torch.randn(spec.batch, spec.width, generator=gen).to(spec.device, dtype)
    g = torch.randn(spec.batch, spec.width, generator=gen).to(spec.device, dtype)
    return x, g


def _barrier(spec: BenchSpec) -> None:
    if spec.device.startswith("cuda"):
        torch.cuda.synchronize()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def time_worker(spec: BenchSpec) -> dict[str, Any]:
    """Median forward, backward and total seconds per pass on this rank, the output error, the
    MGRIT statistics and the per-phase seconds of the last pass."""
    layer_comm, data_comm = layer_data_comms(spec.data_parallel)
    net = build(spec, layer_comm, data_comm)
    x, g = bench_input(spec)
    x_shard, _ = batch_shard(x, data_comm)
    g_shard, _ = batch_shard(g, data_comm)
    serial_net = net.to_sequential()
    with torch.no_grad():
        reference = serial_net(x_shard)
    model: nn.Module = serial_net if spec.mode == "serial" else net
    forward, backward, reduce, cpu = [], [], [], []
    for rep in range(spec.repeat + 1):  # the first pass warms up
        _barrier(spec)
        cpu_start = time.process_time()
        start = time.perf_counter()
        out = model(x_shard if net.rank == 0 else None)
        middle = time.perf_counter()
        out.backward(g_shard)
        after = time.perf_counter()
        if spec.data_parallel > 1:
            net.average_gradients(weight=1.0)  # y . g is a sum over the examples: the shards' gradients add
        cpu_stop = time.process_time()
        _barrier(spec)
        stop = time.perf_counter()
        if rep > 0:
            cpu.append(cpu_stop - cpu_start)
            forward.append(middle - start)
            backward.append(after - middle)
            reduce.append(stop - after)
        model.zero_grad(set_to_none=True)
    total = [f + b + r for f, b, r in zip(forward, backward, reduce)]
    result: dict[str, Any] = {
        "spec": asdict(spec), "label": spec.label(), "rank": net.rank, "data_group": data_comm.rank,
        "nproc": net.comm.size * spec.data_parallel,
        "forward_seconds": statistics.median(forward), "backward_seconds": statistics.median(backward),
        "allreduce_seconds": statistics.median(reduce), "total_seconds": statistics.median(total),
        # this process's CPU time per pass: its share of the work, whatever else loads the machine
        "cpu_seconds": statistics.median(cpu),
        "max_abs_error": float((out.detach() - reference).abs().max()) if net.rank == 0 else None,
    }
    if spec.mode != "serial":
        for phase in ("forward", "backward"):
            st = net.last_stats[phase]
            result[phase] = {key: st.get(key) for key in ("iterations", "residuals", "converged", "steps_per_level",
                                                          "phase_seconds", "seconds")}
    return result


def time_many(specs: list[BenchSpec]) -> list[dict[str, Any]]:
    """Several timings in one process group (one worker start-up)."""
    return [time_worker(spec) for spec in specs]


def warm_start_iterations(
    steps: int, warm_start: bool, *, same_batch: bool = False, tol: float = 1e-5, seed: int = 0
) -> list[tuple[int, int]]:
    """(forward, backward) MGRIT iterations of every batch of ``steps`` SGD steps on the digits with
    the benchmark's step layers (64 layers, width 128, 3 levels, cf 4, float32), warm-started or
    not; shuffled batches of 128, or (``same_batch``) one batch of 128 every step."""
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from torchpint.layerpar.train import LayerParallelConfig, build_layer_parallel_resnet, load_layer_parallel_data

    config = LayerParallelConfig(dataset="digits", arch="mlp", width=128, layers=64, T=1.0, levels=3, cf=4, nested=False,
                         fwd_max_iter=30, bwd_max_iter=30, fwd_tol=tol, bwd_tol=tol, batch=128, lr=0.05,
                         momentum=0.9, dtype="float32", seed=seed)
    data = load_layer_parallel_data(config)
    net = build_layer_parallel_resnet(config, data.input_shape, data.num_classes)
    net.warm_start = warm_start
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum)
    # drop_last: every batch has the same shape (a smaller last batch would start cold)
    loader = DataLoader(data.train, batch_size=config.batch, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    first = next(iter(loader))
    counts: list[tuple[int, int]] = []
    while len(counts) < steps:
        for xb, yb in ([first] * steps if same_batch else loader):
            loss = F.cross_entropy(net(xb.float()), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            counts.append((net.last_stats["forward"]["iterations"], net.last_stats["backward"]["iterations"]))
            if len(counts) == steps:
                break
    return counts
