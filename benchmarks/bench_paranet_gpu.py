"""ResNet-1001 on one GPU: the original against the parareal network with its N sub-networks on CUDA streams.

The issue's GPU measurement, ready for a machine that has one (no GPU was
lent to the sessions that wrote it: it ran only with ``--device cpu``, where
the streams are threads, to check the script itself):

    .venv/bin/python benchmarks/bench_paranet_gpu.py                      # resnet1001, N=4, batch 128, cuda
    .venv/bin/python benchmarks/bench_paranet_gpu.py --device cpu --model resnet20-small --batch 8 --steps 2

Three configurations, each timed as the median of ``--steps`` training steps
(forward, backward, SGD with momentum and weight decay) after ``--warmup``,
with the device synchronized around each step, on CIFAR-sized synthetic data:

* ``original``           the network, one stream;
* ``parareal serial``    the parareal network (K = 1), its sub-networks one
                         after another on one stream: the coarse networks' cost;
* ``parareal streams``   the same network (same weights) with sub-network j
                         on stream j of the same GPU (``ParaNet.to_devices``):
                         one host thread per sub-network launches its kernels.

Also the forward pass alone (eval mode, no grad), and a check that the two
parareal executions compute the same output (the streams change the order
of nothing inside a sub-network).  Results: JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchpint.models import build_model
from torchpint.paranet import ParaNet


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Any, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _measure(net: nn.Module, x: Tensor, y: Tensor, steps: int, warmup: int, device: torch.device) -> dict[str, float]:
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        net.train()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def forward() -> None:
        net.eval()
        with torch.no_grad():
            net(x)

    return {"step": _timed(step, steps, warmup, device), "forward": _timed(forward, steps, warmup, device)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet1001")
    parser.add_argument("--subnets", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (threads instead of streams)")
    parser.add_argument("--balance", default="time", choices=("flops", "params", "time", "blocks"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON file (default benchmarks/results/paranet_gpu_<model>_b<batch>.json)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_paranet_gpu: no CUDA device here (torch.cuda.is_available() is False); "
              "use --device cpu to check the script", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    original = build_model(args.model, num_classes=10, in_channels=3).to(device)
    gen = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(args.batch, 3, args.image, args.image, generator=gen).to(device)
    y = torch.randint(10, (args.batch,), generator=gen).to(device)

    serial = ParaNet(copy.deepcopy(original), args.subnets, input_shape=(3, args.image, args.image),
                     balance=args.balance, balance_batch=args.batch)
    # the same split and weights, sub-network j on stream j of the device (CPU: on thread j)
    streams = ParaNet(copy.deepcopy(original), args.subnets, input_shape=(3, args.image, args.image),
                      split_points=serial.bounds[1:-1]).to_devices([device])
    streams.load_state_dict(serial.state_dict())
    info = serial.info()
    print(f"{args.model}: {info['num_blocks']} blocks, N = {args.subnets}, split at {info['split_points']}, "
          f"coarse networks {100 * info['coarse_flops_per_forward'] / info['original_flops']:.2f}% of the MACs, "
          f"batch {args.batch}, {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.machine()})",
          flush=True)
    with torch.no_grad():
        serial.eval()
        streams.eval()
        a, b = serial(x), streams(x)
        same = float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))
    results: dict[str, dict[str, float]] = {}
    for key, net in (("original", original), ("parareal serial", serial), ("parareal streams", streams)):
        start = time.perf_counter()
        results[key] = r = _measure(net, x, y, args.steps, args.warmup, device)
        print(f"  {key:<18} step {1e3 * r['step']:9.2f} ms | forward {1e3 * r['forward']:9.2f} ms  "
              f"[{time.perf_counter() - start:.0f} s]", flush=True)
    base = results["original"]
    ratios = {f"{metric}_speedup_{key.replace(' ', '_')}": base[metric] / r[metric]
              for key, r in results.items() if key != "original" for metric in ("step", "forward")}
    ratios["stream_overlap_gain_step"] = results["parareal serial"]["step"] / results["parareal streams"]["step"]
    print(f"\nstep: parareal on streams {ratios['step_speedup_parareal_streams']:.2f}x the original's speed "
          f"({ratios['stream_overlap_gain_step']:.2f}x the serial parareal network's); forward "
          f"{ratios['forward_speedup_parareal_streams']:.2f}x; streams vs serial output: relative difference {same:.1e}")
    out = Path(args.out or f"benchmarks/results/paranet_gpu_{args.model}_b{args.batch}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "args": vars(args), "results": results, "ratios": ratios, "streams_vs_serial_rel_diff": same,
        "split_points": info["split_points"], "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "torch": torch.__version__,
    }, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
