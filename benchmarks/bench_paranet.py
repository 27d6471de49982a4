"""Parareal network vs the original, data parallelism and pipelining: step time and one-sample latency.

One worker = one process with one intra-op thread (it plays the role of one
GPU).  Every configuration trains the same network on the same synthetic
CIFAR-sized batch at the same global batch size, each in its own fresh
process group, one after the other:

* ``original x1``    the original network, 1 worker;
* ``original 2thr``  the original network, 1 process with 2 intra-op threads;
* ``DDP x2``         DistributedDataParallel, 2 workers, half the batch each;
* ``GPipe x2``       2-stage pipeline (torch.distributed.pipelining, ScheduleGPipe),
                     split where the parareal network splits, ``--microbatches`` micro-batches;
* ``parareal x2``    the parareal network, N = 2 sub-networks on 2 workers, K = 1.

Measured on rank 0: the median wall time of a training step (forward,
backward, SGD step) at the global batch, and for one sample the latency of a
forward pass (eval mode, no grad) and of a whole training step.  The split of
the parareal network (and of the pipeline) is balanced by measured time at the
global batch; the one-sample parareal network is split for one sample (block
costs are not proportional across batch sizes; ``--latency-split`` overrides).  DDP cannot
split one sample: its one-sample numbers are one sample per worker (a
global batch of 2).  A pipeline with one sample has one micro-batch; its
forward latency is timed on the last stage, where the output appears, from a
barrier that starts both stages.

    .venv/bin/python benchmarks/bench_paranet.py --model resnet56 --batch 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from torchpint.dist import run_workers
from torchpint.models import build_model
from torchpint.paranet import ParaNet


@dataclass
class Spec:
    model: str = "resnet56"
    width: int | None = None
    image: int = 32
    batch: int = 64
    steps: int = 8
    warmup: int = 2
    latency_steps: int = 20
    subnets: int = 2
    microbatches: int = 4
    balance: str = "time"
    seed: int = 0
    split_points: list[int] | None = None
    latency_split_points: list[int] | None = None  # the parareal network for one sample is split for one sample


def _model(spec: Spec) -> nn.Module:
    torch.manual_seed(spec.seed)
    kw = {} if spec.width is None else {"base_width" if spec.model.startswith("resnet") else "width": spec.width}
    return build_model(spec.model, num_classes=10, in_channels=3, **kw)


def _paranet(spec: Spec, split_points: list[int] | None = None, batch: int | None = None) -> ParaNet:
    """The parareal network, split at ``split_points`` or by ``spec.balance`` measured at ``batch``."""
    return ParaNet(_model(spec), spec.subnets, input_shape=(3, spec.image, spec.image), split_points=split_points,
                   balance=spec.balance, balance_batch=batch or spec.batch)


def _batch(spec: Spec, n: int, offset: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(spec.seed + 1)
    x = torch.randn(offset + n, 3, spec.image, spec.image, generator=gen)[offset:]
    y = torch.randint(10, (offset + n,), generator=gen)[offset:]
    return x, y


def _timed(fn: Any, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _timed_end_to_end(fn: Any, steps: int, warmup: int) -> float:
    """Like _timed, with a barrier before each run: on the last stage this is the end-to-end time."""
    for _ in range(warmup):
        dist.barrier()
        fn()
    samples = []
    for _ in range(steps):
        dist.barrier()
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _mode(module: nn.Module, training: bool) -> None:
    """Train or eval mode, switched only when it changes: ``train()`` walks every submodule (1 ms for
    ResNet-164), which a training loop does once per epoch, not once per step."""
    if module.training != training:
        module.train(training)


def _sgd(params: Any) -> torch.optim.Optimizer:
    # fused: one kernel per step instead of a handful of foreach passes (4x faster on CPU), for every configuration
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4, fused=True)


# ----------------------------------------------------------------------------- configurations
def bench_single(spec: Spec) -> dict[str, float]:
    """The original network in this one process (threads as run_workers set them)."""
    net = _model(spec)
    opt = _sgd(net.parameters())

    def step(x: Tensor, y: Tensor) -> None:
        _mode(net, True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def forward(x: Tensor) -> None:
        _mode(net, False)
        with torch.no_grad():
            net(x)

    xb, yb = _batch(spec, spec.batch)
    x1, y1 = _batch(spec, 1)
    return {
        "step": _timed(lambda: step(xb, yb), spec.steps, spec.warmup),
        "latency_forward": _timed(lambda: forward(x1), spec.latency_steps, 3),
        "latency_step": _timed(lambda: step(x1, y1), spec.latency_steps, 3),
        "threads": torch.get_num_threads(),
    }


def bench_ddp(spec: Spec) -> dict[str, float] | None:
    """DistributedDataParallel over the process group: each rank gets batch / world samples."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank, world = dist.get_rank(), dist.get_world_size()
    net = _model(spec)
    ddp = DDP(net)
    opt = _sgd(ddp.parameters())
    per_rank = spec.batch // world
    xb, yb = _batch(spec, per_rank, rank * per_rank)
    x1, y1 = _batch(spec, 1, rank)

    def step(x: Tensor, y: Tensor) -> None:
        _mode(ddp, True)
        F.cross_entropy(ddp(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def forward(x: Tensor) -> None:  # one sample cannot be split: one replica does it all
        _mode(ddp, False)  # the wrapper's flag and the network's together
        with torch.no_grad():
            net(x)

    dist.barrier()
    result = {
        "step": _timed(lambda: step(xb, yb), spec.steps, spec.warmup),
        "latency_step": _timed(lambda: step(x1, y1), spec.latency_steps, 3),
    }
    dist.barrier()
    result["latency_forward"] = _timed(lambda: forward(x1), spec.latency_steps, 3)
    dist.barrier()
    return result if rank == 0 else None


def _stages(spec: Spec) -> tuple[nn.Module, nn.Module]:
    model = _model(spec)
    blocks = list(model.blocks)
    cut = _paranet(spec, spec.split_points).bounds[1]
    first = nn.Sequential(model.stem, *blocks[:cut])
    second = nn.Sequential(*blocks[cut:], model.head)
    return first, second


def bench_pipeline(spec: Spec) -> dict[str, float] | None:
    """Two-stage GPipe pipeline (torch.distributed.pipelining) at the same global batch."""
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    rank, world = dist.get_rank(), dist.get_world_size()
    module = _stages(spec)[rank]
    opt = _sgd(module.parameters())
    device = torch.device("cpu")

    def loss_fn(out: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(out, target)

    schedules: dict[int, Any] = {}

    def schedule(batch: int) -> Any:
        if batch not in schedules:
            micro = min(spec.microbatches, batch)
            stage = PipelineStage(module, rank, world, device)
            schedules[batch] = ScheduleGPipe(stage, n_microbatches=micro, loss_fn=loss_fn)
        return schedules[batch]

    def step(x: Tensor, y: Tensor) -> None:
        _mode(module, True)
        sched = schedule(len(x))
        if rank == 0:
            sched.step(x)
        else:
            sched.step(target=y, losses=[])
        opt.step()
        opt.zero_grad(set_to_none=True)

    def forward(x: Tensor, y: Tensor) -> None:
        _mode(module, False)
        sched = schedule(len(x))
        with torch.no_grad():
            if rank == 0:
                sched.eval(x)
            else:
                sched.eval(target=y, losses=[])  # the last stage also evaluates the loss function

    xb, yb = _batch(spec, spec.batch)
    x1, y1 = _batch(spec, 1)
    dist.barrier()
    result = {
        "step": _timed(lambda: step(xb, yb), spec.steps, spec.warmup),
        "latency_step": _timed(lambda: step(x1, y1), spec.latency_steps, 3),
    }
    dist.barrier()
    # the output appears on the last stage: time it there, from a common start
    forward_time = torch.tensor([_timed_end_to_end(lambda: forward(x1, y1), spec.latency_steps, 3)], dtype=torch.float64)
    dist.broadcast(forward_time, src=world - 1)
    result["latency_forward"] = float(forward_time)
    dist.barrier()
    return result if rank == 0 else None


def bench_parareal(spec: Spec) -> dict[str, float] | None:
    """The parareal network, one sub-network per rank (hub on rank 0), K = 1.

    The step is timed on the network split for ``spec.batch``, the one-sample
    latencies on the network split for one sample (``latency_split_points``:
    a block's cost depends on the batch, so the balanced split does too).
    """
    result = _parareal(spec, spec.split_points, "step") or {}
    result.update(_parareal(spec, spec.latency_split_points or spec.split_points, "latency") or {})
    return result if dist.get_rank() == 0 else None


def _parareal(spec: Spec, split_points: list[int] | None, what: str) -> dict[str, float] | None:
    from torchpint.paranet.distributed import ParaNetHub, ParaNetWorker

    rank = dist.get_rank()
    net = _paranet(spec, split_points)
    if rank != 0:
        module = net.fine_subnets[rank]
        worker = ParaNetWorker(net, optimizer=_sgd(module.parameters()))
        del net
        worker.serve()
        return None
    hub = ParaNetHub(net)
    del net
    opt = _sgd(hub.parameters())

    def step(x: Tensor, y: Tensor) -> None:
        _mode(hub, True)
        F.cross_entropy(hub(x, lr=0.01), y).backward()  # the workers step right after their backward
        hub.wait()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def forward(x: Tensor) -> None:
        _mode(hub, False)
        with torch.no_grad():
            hub(x)

    if what == "step":
        xb, yb = _batch(spec, spec.batch)
        result = {"step": _timed(lambda: step(xb, yb), spec.steps, spec.warmup)}
    else:
        x1, y1 = _batch(spec, 1)
        result = {
            "latency_forward": _timed(lambda: forward(x1), spec.latency_steps, 3),
            "latency_step": _timed(lambda: step(x1, y1), spec.latency_steps, 3),
        }
    hub.stop()
    return result


# ----------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--width", type=int, help="ResNet base width / VGG width")
    parser.add_argument("--image", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="timed training steps at the full batch")
    parser.add_argument("--latency-steps", type=int, default=20)
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--balance", default="time", choices=("flops", "params", "time", "blocks"),
                        help="how to choose the split (default: measured time at the benchmark batch)")
    parser.add_argument("--split", help="split point (block index) instead of --balance")
    parser.add_argument("--latency-split", help="split point of the one-sample network (default: --split if given, "
                                                "else balanced at batch 1)")
    parser.add_argument("--only", help="comma-separated subset: single,threads2,ddp,pipeline,parareal")
    parser.add_argument("--out", help="JSON file (default benchmarks/results/paranet_<model>_b<batch>.json)")
    args = parser.parse_args(argv)
    spec = Spec(model=args.model, width=args.width, image=args.image, batch=args.batch, steps=args.steps,
                latency_steps=args.latency_steps, microbatches=args.microbatches, balance=args.balance,
                split_points=[int(args.split)] if args.split else None)
    if spec.batch % 2:
        raise SystemExit("--batch must be even (DDP splits it over 2 workers)")
    torch.set_num_threads(1)
    net = _paranet(spec, spec.split_points)
    spec.split_points = net.bounds[1:-1]  # every configuration splits at the same place
    if args.latency_split:
        spec.latency_split_points = [int(args.latency_split)]
    else:
        spec.latency_split_points = _paranet(spec, spec.split_points if args.split else None, 1).bounds[1:-1]
    info = net.info()
    model = info["step_model"]
    print(f"{spec.model}: {info['num_blocks']} blocks, split at {spec.split_points} "
          f"(FLOP shares {info['flop_balance']['shares']}), coarse networks "
          f"{100 * info['coarse_flops_per_forward'] / info['original_flops']:.2f}% of the original's MACs, "
          f"batch {spec.batch}, 3x{spec.image}x{spec.image}; one sample: split at {spec.latency_split_points}"
          + (f"; modelled step {1e3 * model['step_s']:.0f} ms, {model['speedup']:.2f}x" if model else ""), flush=True)
    configs = {
        "single": ("original x1", lambda: run_workers(bench_single, 1, (spec,), threads=1)[0]),
        "threads2": ("original 2thr", lambda: run_workers(bench_single, 1, (spec,), threads=2)[0]),
        "ddp": ("DDP x2", lambda: run_workers(bench_ddp, 2, (spec,), threads=1)[0]),
        "pipeline": (f"GPipe x2 ({spec.microbatches} mb)", lambda: run_workers(bench_pipeline, 2, (spec,), threads=1)[0]),
        "parareal": ("parareal x2", lambda: run_workers(bench_parareal, 2, (spec,), threads=1)[0]),
    }
    chosen = args.only.split(",") if args.only else list(configs)
    load_before = os.getloadavg()
    results: dict[str, dict[str, float]] = {}
    for key in chosen:
        label, fn = configs[key]
        start = time.perf_counter()
        results[key] = fn()
        r = results[key]
        print(f"  {label:<18} step {1e3 * r['step']:8.1f} ms | forward(1) {1e3 * r['latency_forward']:7.2f} ms | "
              f"train step(1) {1e3 * r['latency_step']:7.2f} ms  [{time.perf_counter() - start:.0f} s]", flush=True)
    load_after = os.getloadavg()
    table = _table(spec, results, configs)
    print()
    print(table)
    print(f"\nload average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} cores "
          f"(other work on the machine inflates every number)")
    out = Path(args.out or f"benchmarks/results/paranet_{spec.model}_b{spec.batch}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "spec": asdict(spec), "results": results, "ratios": _ratios(results), "table": table,
        "info": {k: info[k] for k in ("num_blocks", "split_points", "flop_balance", "coarse_flops_per_forward",
                                      "original_flops", "coarse_params", "original_params", "step_model")},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "python": sys.version.split()[0], "loadavg_before": load_before, "loadavg_after": load_after},
        "command": " ".join(["benchmarks/bench_paranet.py", *(argv if argv is not None else sys.argv[1:])]),
    }, indent=1))
    print(f"results: {out}")
    return 0


def _ratios(results: dict[str, dict[str, float]]) -> dict[str, float]:
    r: dict[str, float] = {}
    p = results.get("parareal")
    if not p:
        return r
    for key, res in results.items():
        if key == "parareal":
            continue
        r[f"step_speedup_vs_{key}"] = res["step"] / p["step"]
        r[f"forward_latency_ratio_vs_{key}"] = res["latency_forward"] / p["latency_forward"]
        r[f"step_latency_ratio_vs_{key}"] = res["latency_step"] / p["latency_step"]
    if "ddp" in results:
        r["throughput_vs_ddp"] = results["ddp"]["step"] / p["step"]
    return r


def _table(spec: Spec, results: dict[str, dict[str, float]], configs: dict[str, Any]) -> str:
    base = results.get("single")
    par = results.get("parareal")
    head = (f"| configuration | step ms (batch {spec.batch}) | samples/s | step speedup vs x1 | parareal faster by | "
            f"forward ms (1 sample) | parareal lower by | train step ms (1 sample) | parareal lower by |")
    rows = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, r in results.items():
        speed = f"{base['step'] / r['step']:.2f}x" if base else "-"
        vs = f"{r['step'] / par['step']:.2f}x" if par and key != "parareal" else "-"
        lf = f"{r['latency_forward'] / par['latency_forward']:.2f}x" if par and key != "parareal" else "-"
        ls = f"{r['latency_step'] / par['latency_step']:.2f}x" if par and key != "parareal" else "-"
        rows.append(f"| {configs[key][0]} | {1e3 * r['step']:.1f} | {spec.batch / r['step']:.1f} | {speed} | {vs} | "
                    f"{1e3 * r['latency_forward']:.2f} | {lf} | {1e3 * r['latency_step']:.2f} | {ls} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
