"""Timing a layer-parallel forward+backward pass, and the ideal-speedup model (benchmarks/bench_layer_parallel.py).

The model counts work in layer steps.  One MGRIT solve applies the step ``W_l`` times on level
``l`` (summed over ranks; the engine counts them, and the count does not depend on the number
of processes).  With ``P`` processes, ideally every level but the coarsest is split evenly and
the coarsest (a sequential solve) is not split at all, so one solve costs

    T_solve(P) = t_step * (sum_{l < coarsest} W_l / P + W_coarsest)

and a training step ``T(P) = T_fwd(P) + T_adj(P) + t_grad / P`` (``t_grad``: the parameter
gradients, perfectly parallel).  ``t_step`` (forward and adjoint separately) and ``t_grad``
are measured on one process; the ideal speedup is ``T_serial / T(P)`` where ``T_serial`` is
the plain ``nn.Sequential``'s forward+backward time.  Communication and load imbalance are
left out: that is what makes it ideal.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchpint.layerpar.network import LayerParallel


@dataclass
class BenchSpec:
    layers: int = 64
    width: int = 128
    batch: int = 128
    features: int = 64
    classes: int = 10
    T: float = 4.0
    levels: int = 3
    cf: int = 4
    relax: str = "FCF"
    cycle: str = "V"
    nested: bool = True
    fwd_max_iter: int = 10
    bwd_max_iter: int = 10
    tol: float = 1e-9
    repeat: int = 3
    mode: str = "layer-parallel"  # or "serial"
    device: str = "cpu"
    step_mode: str = "auto"
    dtype: str = "float32"
    seed: int = 0

    def label(self) -> str:
        if self.mode == "serial":
            return "serial nn.Sequential"
        if self.levels == 1:
            return "layer-parallel, 1 level (exact pipelined pass)"
        return (f"layer-parallel, {self.levels} levels cf {self.cf} {self.relax}, "
                f"max_iter {self.fwd_max_iter}/{self.bwd_max_iter}")


def build(spec: BenchSpec) -> LayerParallel:
    torch.manual_seed(spec.seed)
    w = spec.width
    net = LayerParallel(
        lambda: nn.Sequential(nn.Linear(w, w), nn.Tanh()), spec.layers, spec.T,
        opening=nn.Linear(spec.features, w), closing=nn.Linear(w, spec.classes), levels=spec.levels, cf=spec.cf,
        relax=spec.relax, cycle=spec.cycle, nested=spec.nested, fwd_max_iter=spec.fwd_max_iter,
        bwd_max_iter=spec.bwd_max_iter, fwd_tol=spec.tol, bwd_tol=spec.tol, step_mode=spec.step_mode,
    )
    return net.to(device=spec.device, dtype=getattr(torch, spec.dtype))


def _sync(spec: BenchSpec, net: LayerParallel) -> None:
    if spec.device.startswith("cuda"):
        torch.cuda.synchronize()
    net.comm.sum(torch.zeros(1))  # every rank starts the next pass together


def time_worker(spec: BenchSpec) -> dict[str, Any]:
    """Median forward, backward and total seconds per batch on this rank, and its MGRIT statistics."""
    net = build(spec)
    gen = torch.Generator().manual_seed(spec.seed + 1)
    x = torch.randn(spec.batch, spec.features, generator=gen).to(spec.device, getattr(torch, spec.dtype))
    y = torch.randint(0, spec.classes, (spec.batch,), generator=gen).to(spec.device)
    model: nn.Module = net.to_sequential() if spec.mode == "serial" else net
    fwd, bwd, grad, cpu = [], [], [], []
    for rep in range(spec.repeat + 1):  # the first pass warms up
        _sync(spec, net)
        start = time.perf_counter()
        cpu_start = time.process_time()
        out = model(x if net.rank == 0 else None)
        loss = F.cross_entropy(out, y)
        _sync(spec, net)
        middle = time.perf_counter()
        loss.backward()
        cpu_stop = time.process_time()
        _sync(spec, net)
        stop = time.perf_counter()
        if rep > 0:
            cpu.append(cpu_stop - cpu_start)
            fwd.append(middle - start)
            bwd.append(stop - middle)
            if spec.mode != "serial":
                grad.append(bwd[-1] - net.last_stats["backward"]["solve_seconds"])
        model.zero_grad(set_to_none=True)
    result: dict[str, Any] = {
        "spec": asdict(spec), "rank": net.rank, "nproc": net.comm.size,
        "forward_seconds": statistics.median(fwd), "backward_seconds": statistics.median(bwd),
        "total_seconds": statistics.median(f + b for f, b in zip(fwd, bwd)),
        "cpu_seconds": statistics.median(cpu),  # this process's CPU time per pass: its share of the work
    }
    if spec.mode != "serial":
        st = net.last_stats
        result.update({
            "forward_iterations": st["forward"]["iterations"], "backward_iterations": st["backward"]["iterations"],
            "forward_converged": st["forward"]["converged"], "backward_converged": st["backward"]["converged"],
            "forward_steps_per_level": st["forward"]["steps_per_level"],
            "backward_steps_per_level": st["backward"]["steps_per_level"],
            "forward_solve_seconds": st["forward"]["seconds"], "backward_solve_seconds": st["backward"]["solve_seconds"],
            "grad_seconds": statistics.median(grad),
        })
    return result


def ideal_time(one_process: dict[str, Any], nproc: int) -> float:
    """The model's time per batch on ``nproc`` processes, from a one-process measurement."""
    total = 0.0
    for phase, seconds in (("forward", "forward_solve_seconds"), ("backward", "backward_solve_seconds")):
        steps = one_process[f"{phase}_steps_per_level"]
        t_step = one_process[seconds] / max(sum(steps), 1)
        total += t_step * (sum(steps[:-1]) / nproc + steps[-1])
    return total + one_process["grad_seconds"] / nproc


def mgrit_work(one_process: dict[str, Any], layers: int) -> float:
    """Layer steps of both solves over the ``2 * layers`` of a serial forward and backward pass."""
    return (sum(one_process["forward_steps_per_level"]) + sum(one_process["backward_steps_per_level"])) / (2 * layers)


def time_many(specs: list[BenchSpec]) -> list[dict[str, Any]]:
    """Several timings in one process group (one worker start-up)."""
    return [time_worker(spec) for spec in specs]
