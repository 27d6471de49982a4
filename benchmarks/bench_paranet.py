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
* ``parareal x2``    the parareal network, N = 2 sub-networks on 2 workers, K = 1;
* with ``--accumulate M``: ``original x1, M mb`` and ``parareal x2, M mb``, the
  same two with each batch cut into M micro-batches whose gradients accumulate
  (one optimizer step per batch; batch norm normalizes over each micro-batch,
  as DDP normalizes over each worker's half: the like-for-like row next to DDP).

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

Machines are noisy (the same configuration moves by +-7% from one fresh
process group to the next on the 2-core machine), so with ``--rounds R`` every
configuration runs R times, the configurations taking turns, each time in a
fresh process group; the table shows the median over the rounds, and the
step speedup of each round (original x1 and parareal of the same round) is
printed with its spread.

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

from torchpint.run.launch import run_workers
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
    accumulate: int = 1  # the "M mb" rows (step only): each batch in this many accumulated micro-batches
    micro_split_points: list[int] | None = None  # the parareal network for micro-batches is split at their size
    rounds: int = 1


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
def _pieces(x: Tensor, y: Tensor, micro: int) -> list[tuple[Tensor, Tensor, float]]:
    """``micro`` consecutive micro-batches and the weight of each one's mean loss in the batch's mean loss."""
    return [(a, b, len(a) / len(x)) for a, b in zip(x.tensor_split(micro), y.tensor_split(micro))]


def bench_single(spec: Spec, micro: int = 1) -> dict[str, float]:
    """The original network in this one process (threads as run_workers set them).

    ``micro > 1``: the step only, each batch in ``micro`` accumulated micro-batches.
    """
    net = _model(spec)
    opt = _sgd(net.parameters())

    def step(x: Tensor, y: Tensor) -> None:
        _mode(net, True)
        for xm, ym, weight in _pieces(x, y, micro):
            (F.cross_entropy(net(xm), ym) * weight).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def forward(x: Tensor) -> None:
        _mode(net, False)
        with torch.no_grad():
            net(x)

    xb, yb = _batch(spec, spec.batch)
    x1, y1 = _batch(spec, 1)
    if micro > 1:
        return {"step": _timed(lambda: step(xb, yb), spec.steps, spec.warmup)}
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


def bench_parareal_micro(spec: Spec) -> dict[str, float] | None:
    """The parareal network's step with each batch in ``spec.accumulate`` accumulated micro-batches."""
    result = _parareal(spec, spec.micro_split_points, "step", spec.accumulate)
    return result if dist.get_rank() == 0 else None


def bench_parareal(spec: Spec) -> dict[str, float] | None:
    """The parareal network, one sub-network per rank (hub on rank 0), K = 1.

    The step is timed on the network split for ``spec.batch``, the one-sample
    latencies on the network split for one sample (``latency_split_points``:
    a block's cost depends on the batch, so the balanced split does too).
    """
    result = _parareal(spec, spec.split_points, "step") or {}
    result.update(_parareal(spec, spec.latency_split_points or spec.split_points, "latency") or {})
    return result if dist.get_rank() == 0 else None


def _parareal(spec: Spec, split_points: list[int] | None, what: str, micro: int = 1) -> dict[str, float] | None:
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
        pieces = _pieces(x, y, micro)
        for i, (xm, ym, weight) in enumerate(pieces):  # the workers step right after their last backward
            (F.cross_entropy(hub(xm, lr=0.01 if i == len(pieces) - 1 else None), ym) * weight).backward()
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
    parser.add_argument("--accumulate", type=int, default=1, metavar="M",
                        help="also time the original (1 worker) and the parareal network with each batch in M "
                             "accumulated micro-batches (rows 'M mb')")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every configuration this many times, taking turns, and report medians")
    parser.add_argument("--only", help="comma-separated subset: single,threads2,ddp,pipeline,parareal"
                                       "[,single_mb,parareal_mb]")
    parser.add_argument("--out", help="JSON file (default benchmarks/results/paranet_<model>_b<batch>.json)")
    args = parser.parse_args(argv)
    spec = Spec(model=args.model, width=args.width, image=args.image, batch=args.batch, steps=args.steps,
                latency_steps=args.latency_steps, microbatches=args.microbatches, balance=args.balance,
                split_points=[int(args.split)] if args.split else None, accumulate=args.accumulate,
                rounds=args.rounds)
    if spec.batch % 2:
        raise SystemExit("--batch must be even (DDP splits it over 2 workers)")
    if not 1 <= spec.accumulate <= spec.batch:
        raise SystemExit(f"--accumulate must be between 1 and the batch ({spec.batch}), got {spec.accumulate}")
    if spec.rounds < 1:
        raise SystemExit(f"--rounds must be >= 1, got {spec.rounds}")
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
    if spec.accumulate > 1:
        spec.micro_split_points = (spec.split_points if args.split
                                   else _paranet(spec, None, spec.batch // spec.accumulate).bounds[1:-1])
        print(f"with {spec.accumulate} accumulated micro-batches of {spec.batch // spec.accumulate}: "
              f"split at {spec.micro_split_points}", flush=True)
    m = spec.accumulate
    configs = {
        "single": ("original x1", lambda: run_workers(bench_single, 1, (spec,), threads=1)[0]),
        "threads2": ("original 2thr", lambda: run_workers(bench_single, 1, (spec,), threads=2)[0]),
        "ddp": ("DDP x2", lambda: run_workers(bench_ddp, 2, (spec,), threads=1)[0]),
        "pipeline": (f"GPipe x2 ({spec.microbatches} mb)", lambda: run_workers(bench_pipeline, 2, (spec,), threads=1)[0]),
        "parareal": ("parareal x2", lambda: run_workers(bench_parareal, 2, (spec,), threads=1)[0]),
    }
    if m > 1:
        configs["single_mb"] = (f"original x1, {m} mb", lambda: run_workers(bench_single, 1, (spec, m), threads=1)[0])
        configs["parareal_mb"] = (f"parareal x2, {m} mb",
                                  lambda: run_workers(bench_parareal_micro, 2, (spec,), threads=1)[0])
    chosen = args.only.split(",") if args.only else list(configs)
    unknown = [k for k in chosen if k not in configs]
    if unknown:
        raise SystemExit(f"--only: unknown configuration(s) {unknown}; choose from {sorted(configs)} "
                         "(single_mb and parareal_mb need --accumulate M > 1)")
    load_before = os.getloadavg()
    rounds: list[dict[str, dict[str, float]]] = []
    for round_index in range(spec.rounds):
        if spec.rounds > 1:
            print(f"round {round_index + 1}/{spec.rounds}", flush=True)
        this: dict[str, dict[str, float]] = {}
        for key in chosen:
            label, fn = configs[key]
            start = time.perf_counter()
            this[key] = r = fn()
            print(f"  {label:<20} step {1e3 * r['step']:8.1f} ms | forward(1) {_ms(r.get('latency_forward'))} ms | "
                  f"train step(1) {_ms(r.get('latency_step'))} ms  [{time.perf_counter() - start:.0f} s]", flush=True)
        rounds.append(this)
    load_after = os.getloadavg()
    results = {key: {metric: statistics.median(r[key][metric] for r in rounds) for metric in rounds[0][key]}
               for key in chosen}
    spread = _round_ratios(rounds)
    table = _table(spec, results, configs)
    print()
    print(table)
    if spec.rounds > 1:
        print(f"\nmedians over {spec.rounds} rounds; per round (min / median / max):")
        for name, values in spread.items():
            print(f"  {name:<34} {min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}  "
                  f"({', '.join(f'{v:.2f}' for v in values)})")
    print(f"\nload average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} cores "
          f"(other work on the machine inflates every number)")
    out = Path(args.out or f"benchmarks/results/paranet_{spec.model}_b{spec.batch}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "spec": asdict(spec), "results": results, "ratios": _ratios(results), "table": table,
        "rounds": rounds, "round_ratios": spread,
        "info": {k: info[k] for k in ("num_blocks", "split_points", "flop_balance", "coarse_flops_per_forward",
                                      "original_flops", "coarse_params", "original_params", "step_model")},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "python": sys.version.split()[0], "loadavg_before": load_before, "loadavg_after": load_after},
        "command": " ".join(["benchmarks/bench_paranet.py", *(argv if argv is not None else sys.argv[1:])]),
    }, indent=1))
    print(f"results: {out}")
    return 0


def _ms(seconds: float | None) -> str:
    return f"{1e3 * seconds:7.2f}" if seconds is not None else "      -"


#: (name, numerator configuration, denominator configuration) of the step ratios followed round by round
_ROUND_RATIOS = (
    ("step speedup vs original x1", "single", "parareal"),
    ("throughput vs DDP", "ddp", "parareal"),
    ("step speedup, mb vs original x1 mb", "single_mb", "parareal_mb"),
    ("step speedup, mb vs original x1", "single", "parareal_mb"),
    ("throughput, mb vs DDP", "ddp", "parareal_mb"),
)


def _round_ratios(rounds: list[dict[str, dict[str, float]]]) -> dict[str, list[float]]:
    """Each step ratio of :data:`_ROUND_RATIOS` in every round (both configurations of one round)."""
    return {name: [r[a]["step"] / r[b]["step"] for r in rounds]
            for name, a, b in _ROUND_RATIOS if a in rounds[0] and b in rounds[0]}


def _ratios(results: dict[str, dict[str, float]]) -> dict[str, float]:
    r: dict[str, float] = {}
    p = results.get("parareal")
    if p:
        for key, res in results.items():
            if key in ("parareal", "parareal_mb", "single_mb"):
                continue
            r[f"step_speedup_vs_{key}"] = res["step"] / p["step"]
            r[f"forward_latency_ratio_vs_{key}"] = res["latency_forward"] / p["latency_forward"]
            r[f"step_latency_ratio_vs_{key}"] = res["latency_step"] / p["latency_step"]
        if "ddp" in results:
            r["throughput_vs_ddp"] = results["ddp"]["step"] / p["step"]
    pm = results.get("parareal_mb")
    if pm:
        for key in ("single_mb", "single"):
            if key in results:
                r[f"mb_step_speedup_vs_{key}"] = results[key]["step"] / pm["step"]
        if "ddp" in results:
            r["mb_throughput_vs_ddp"] = results["ddp"]["step"] / pm["step"]
    return r


def _table(spec: Spec, results: dict[str, dict[str, float]], configs: dict[str, Any]) -> str:
    """One row per configuration; "parareal faster/lower by": against parareal x2 (the "mb" original against
    the "mb" parareal network)."""
    base = results.get("single")
    head = (f"| configuration | step ms (batch {spec.batch}) | samples/s | step speedup vs x1 | parareal faster by | "
            f"forward ms (1 sample) | parareal lower by | train step ms (1 sample) | parareal lower by |")
    rows = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}x" if a is not None and b is not None else "-"

    def ms(t: float | None) -> str:
        return f"{1e3 * t:.2f}" if t is not None else "-"

    for key, r in results.items():
        par = None if key.startswith("parareal") else results.get("parareal_mb" if key == "single_mb" else "parareal")
        speed = ratio(base["step"], r["step"]) if base else "-"
        vs = ratio(r["step"], par["step"]) if par else "-"
        lf = ratio(r.get("latency_forward"), par.get("latency_forward")) if par else "-"
        ls = ratio(r.get("latency_step"), par.get("latency_step")) if par else "-"
        rows.append(f"| {configs[key][0]} | {1e3 * r['step']:.1f} | {spec.batch / r['step']:.1f} | {speed} | {vs} | "
                    f"{ms(r.get('latency_forward'))} | {lf} | {ms(r.get('latency_step'))} | {ls} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
