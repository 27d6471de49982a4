"""Accuracy preserved? Parareal ResNets (N = 2 and 4, K = 1) against the original, mean of 3 seeds.

Every network is trained the same way (SGD, momentum 0.9, weight decay 5e-4,
cosine schedule, same epochs, batch, learning rate, data order per seed) and
starts from the same weights (the parareal network is built from the
original with the same seed, plus its coarse networks).  Training runs in
one process: the parareal network's arithmetic is the same in one process
as over N (the tests check gradients to 1e-5), only the wall time differs.

    .venv/bin/python benchmarks/accuracy_paranet.py            # both data sets, 3 seeds
    .venv/bin/python benchmarks/accuracy_paranet.py --seeds 1 --epochs 3   # quick look

Measured (3 seeds; digits 20 epochs, MNIST-1D 10): digits original 98.33%, N=2 98.15%
(-0.19 points), N=4 97.59% (-0.74); MNIST-1D original 97.93%, N=2 98.03% (+0.10), N=4 98.13%
(+0.20).  With 10 epochs digits gave -0.93 (N=2) and -1.11 (N=4) points: short runs on
360 test images are noisy (1 point = 3.6 images).

Data sets and networks:
* digits (scikit-learn, 1437 train / 360 test, padded to 16x16):
  pre-activation bottleneck ResNet-38 (12 blocks, base width 4);
* MNIST-1D (4000 train / 1000 test, generated locally): 1-D ResNet, 8 blocks, 32 channels.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from torchpint.paranet.train import TrainConfig, load_data, train_local

SETUPS: dict[str, dict[str, Any]] = {
    "digits": {"model": "resnet38-small", "dataset": "digits"},
    "mnist1d": {"model": "resnet1d", "dataset": "mnist1d", "depth": 8},
}
#: epochs per data set unless --epochs is given (digits' 360 test images need a longer run to settle)
EPOCHS = {"digits": 20, "mnist1d": 10}


def run(dataset: str, subnets: int, seed: int, epochs: int | None, workdir: Path) -> dict[str, Any]:
    """Train one network; ``subnets = 0`` is the original."""
    cfg = TrainConfig(**SETUPS[dataset], subnets=max(subnets, 1), epochs=epochs or EPOCHS[dataset], seed=seed, progress=False,
                      balance="flops", lr=0.1, batch_size=64)
    data = load_data(cfg)
    cfg.input_shape, cfg.num_classes = list(data.input_shape), data.num_classes
    folder = workdir / f"{dataset}-N{subnets}-s{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    result = train_local(cfg, folder, f"{dataset} N={subnets}", original=subnets == 0, resume=False)
    return {"test_acc": result["test_accuracy"], "seconds": time.perf_counter() - start, "params": result["params"],
            "history": [h["test_accuracy"] for h in result["history"]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="parareal ResNets vs the original: test accuracy, mean of seeds")
    parser.add_argument("--datasets", default="digits,mnist1d")
    parser.add_argument("--subnets", default="2,4", help="parareal N values (the original is always trained)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, help="epochs for every data set (default: digits 20, mnist1d 10)")
    parser.add_argument("--out", default="benchmarks/results/accuracy_paranet.json")
    args = parser.parse_args(argv)
    datasets = [d for d in args.datasets.split(",") if d]
    networks = [0, *(int(n) for n in args.subnets.split(",") if n)]
    epochs = {d: args.epochs or EPOCHS[d] for d in datasets}
    results: dict[str, Any] = {"epochs": epochs, "seeds": args.seeds, "setups": SETUPS, "runs": {}, "summary": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in datasets:
            for n in networks:
                key = f"{dataset}/{'original' if n == 0 else f'parareal N={n}'}"
                runs = []
                for seed in range(args.seeds):
                    r = run(dataset, n, seed, args.epochs, Path(tmp))
                    runs.append(r)
                    print(f"{key:<24} seed {seed}: test accuracy {100 * r['test_acc']:.2f}% ({r['seconds']:.0f} s)",
                          flush=True)
                accs = [r["test_acc"] for r in runs]
                results["runs"][key] = runs
                results["summary"][key] = {
                    "mean": statistics.fmean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                    "params": runs[0]["params"],
                }
    lines = [f"| data set | network | epochs | parameters | test accuracy (mean ± std, {args.seeds} seeds) | vs original |",
             "|---|---|---:|---:|---:|---:|"]
    for dataset in datasets:
        base = results["summary"][f"{dataset}/original"]["mean"]
        for n in networks:
            key = f"{dataset}/{'original' if n == 0 else f'parareal N={n}'}"
            s = results["summary"][key]
            diff = "-" if n == 0 else f"{100 * (s['mean'] - base):+.2f} points"
            lines.append(f"| {dataset} | {key.split('/')[1]} | {epochs[dataset]} | {s['params']:,} | {100 * s['mean']:.2f} ± "
                         f"{100 * s['std']:.2f}% | {diff} |")
            if n:
                s["difference_points"] = 100 * (s["mean"] - base)
                s["within_1_point"] = abs(s["difference_points"]) <= 1.0
    table = "\n".join(lines)
    results["table"] = table
    results["command"] = " ".join(["benchmarks/accuracy_paranet.py", *(argv if argv is not None else sys.argv[1:])])
    print()
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
