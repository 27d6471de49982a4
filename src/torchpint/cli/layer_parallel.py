"""``torchpint layer-parallel``: ResNets whose forward and backward passes are MGRIT solves across the layers.

    torchpint layer-parallel train --layers 32 --levels 2 --cf 4 --epochs 3 --nproc 2 --dataset digits --out runs/lp

Trains the layer-parallel ResNet (the layers split over ``--nproc`` processes, forward pass by
MGRIT, backward pass by adjoint MGRIT), then the equivalent serial ``nn.Sequential`` from the
same initial weights on the same batches, and reports both test accuracies and the largest
parameter difference.  Writes ``metrics.json``, ``training.png`` (loss and accuracy) and
``model.pt`` (the trained layer-parallel weights) under ``--out``; ``--json`` prints a summary
as the last line of standard output.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from torchpint.cli.plots import integer_ticks, save_figure
from torchpint.layerpar.train import ARCHS, DTYPES, TrainConfig, train_and_compare


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="layer_parallel_command", required=True)
    train = sub.add_parser("train", help="train a layer-parallel ResNet and the serial network the same way")
    defaults = TrainConfig()
    train.add_argument("--layers", type=int, default=defaults.layers, help="residual layers (multiple of cf^(levels-1))")
    train.add_argument("--levels", type=int, default=defaults.levels, help="MGRIT levels (1 = exact serial pass, pipelined)")
    train.add_argument("--cf", type=int, default=defaults.cf, help="coarsening factor")
    train.add_argument("--epochs", type=int, default=defaults.epochs)
    train.add_argument("--nproc", type=int, default=defaults.nproc, help="processes the layers are split over")
    train.add_argument("--dataset", default=defaults.dataset, help="data set (digits; mlp: any generated set)")
    train.add_argument("--out", default="runs/layer-parallel", help="folder for metrics.json, training.png, model.pt")
    train.add_argument("--arch", choices=ARCHS, default=defaults.arch, help="conv: 3x3 conv + tanh steps; mlp: linear + tanh")
    train.add_argument("--width", type=int, default=defaults.width, help="channels (conv) or features (mlp)")
    train.add_argument("--T", type=float, default=defaults.T, help="final time: step h = T / layers")
    train.add_argument("--relax", default=defaults.relax, help="F, FCF or F(CF)^k")
    train.add_argument("--cycle", default=defaults.cycle, choices=("V", "F"))
    train.add_argument("--nested", action=argparse.BooleanOptionalAction, default=defaults.nested)
    train.add_argument("--fwd-max-iter", type=int, default=defaults.fwd_max_iter)
    train.add_argument("--bwd-max-iter", type=int, default=defaults.bwd_max_iter)
    train.add_argument("--fwd-tol", type=float, default=defaults.fwd_tol, help="absolute tolerance, forward solve")
    train.add_argument("--bwd-tol", type=float, default=defaults.bwd_tol, help="absolute tolerance, adjoint solve")
    train.add_argument("--batch", type=int, default=defaults.batch)
    train.add_argument("--lr", type=float, default=defaults.lr)
    train.add_argument("--momentum", type=float, default=defaults.momentum)
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--dtype", choices=tuple(DTYPES), default=defaults.dtype)
    train.add_argument("--serial", action=argparse.BooleanOptionalAction, default=True,
                       help="also train the serial network and compare (default on)")
    train.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bars")
    train.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its last epoch checkpoint (same options)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        dataset=args.dataset, arch=args.arch, width=args.width, layers=args.layers, T=args.T, levels=args.levels,
        cf=args.cf, relax=args.relax, cycle=args.cycle, nested=args.nested, fwd_max_iter=args.fwd_max_iter,
        bwd_max_iter=args.bwd_max_iter, fwd_tol=args.fwd_tol, bwd_tol=args.bwd_tol, epochs=args.epochs,
        batch=args.batch, lr=args.lr, momentum=args.momentum, seed=args.seed, dtype=args.dtype, nproc=args.nproc,
        progress=args.progress, checkpoint_dir=str(Path(args.out) / "checkpoints"), resume=args.resume,
    )


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready summary (no weights, no per-batch losses)."""
    lp = result["layer_parallel"]
    last = lp["history"][-1]
    out: dict[str, Any] = {
        "config": result["config"],
        "nproc": result["config"]["nproc"],
        "test_accuracy_layer_parallel": result["test_accuracy_layer_parallel"],
        "train_loss_layer_parallel": last["train_loss"],
        "forward_iterations_mean": float(sum(h["forward_iterations_mean"] for h in lp["history"]) / len(lp["history"])),
        "backward_iterations_mean": float(sum(h["backward_iterations_mean"] for h in lp["history"]) / len(lp["history"])),
        "seconds_layer_parallel": lp["seconds"],
        "seconds_per_batch_layer_parallel": lp["seconds_per_batch"],
        "history_layer_parallel": lp["history"],
    }
    if "serial" in result:
        out.update({
            "test_accuracy_serial": result["test_accuracy_serial"],
            "train_loss_serial": result["serial"]["history"][-1]["train_loss"],
            "max_parameter_difference": result["max_parameter_difference"],
            "seconds_serial": result["serial"]["seconds"],
            "seconds_per_batch_serial": result["serial"]["seconds_per_batch"],
            "history_serial": result["serial"]["history"],
        })
    return out


def plot_training(result: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {"layer-parallel": result["layer_parallel"]}
    if "serial" in result:
        runs["serial"] = result["serial"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for (label, run), style in zip(runs.items(), ("-", "--")):
        ax_loss.plot(range(1, len(run["batch_losses"]) + 1), run["batch_losses"], style, label=label, alpha=0.8)
        epochs = [h["epoch"] for h in run["history"]]
        ax_acc.plot(epochs, [h["test_accuracy"] for h in run["history"]], "o" + style, label=f"{label}, test")
        ax_acc.plot(epochs, [h["train_accuracy"] for h in run["history"]], "s" + style, label=f"{label}, train", alpha=0.6)
    ax_loss.set_xlabel("batch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.set_yscale("log")
    ax_loss.grid(True, alpha=0.3)
    ax_loss.legend()
    integer_ticks(ax_loss)
    integer_ticks(ax_acc)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.grid(True, alpha=0.3)
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def write_outputs(result: dict[str, Any], out: Path) -> dict[str, Any]:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(result)
    c = result["config"]
    plot_training(result, out / "training.png",
                  f"{c['layers']}-layer {c['arch']} ResNet on {c['dataset']}: MGRIT {c['levels']} levels, cf {c['cf']}, "
                  f"{c['nproc']} proc.")
    (out / "metrics.json").write_text(json.dumps(
        {**summary, "batch_losses_layer_parallel": result["layer_parallel"]["batch_losses"],
         "batch_losses_serial": result.get("serial", {}).get("batch_losses")}, indent=1))
    torch.save({k: torch.from_numpy(v) for k, v in result["layer_parallel"]["state"].items()}, out / "model.pt")
    summary["files"] = {name: str(out / name) for name in ("metrics.json", "training.png", "model.pt")}
    return summary


def run_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    config.validate()  # bad input: one clear line (exit 2) before any worker starts
    print(f"torchpint layer-parallel train: {config.layers}-layer {config.arch} ResNet (width {config.width}, "
          f"T={config.T:g}) on {config.dataset}, MGRIT {config.levels} levels, cf={config.cf}, {config.relax}, "
          f"{config.cycle}-cycle, fwd/bwd max_iter {config.fwd_max_iter}/{config.bwd_max_iter}, "
          f"tol {config.fwd_tol:g}/{config.bwd_tol:g}, {config.epochs} epochs, batch {config.batch}, "
          f"SGD lr {config.lr:g} momentum {config.momentum:g}, {config.dtype}, nproc={config.nproc}", flush=True)
    start = time.perf_counter()
    result = train_and_compare(config, serial=args.serial)
    summary = write_outputs(result, Path(args.out))
    print(f"layer-parallel: test accuracy {summary['test_accuracy_layer_parallel']:.4f}, "
          f"MGRIT iterations per batch fwd {summary['forward_iterations_mean']:.2f} / bwd "
          f"{summary['backward_iterations_mean']:.2f}, {summary['seconds_per_batch_layer_parallel'] * 1e3:.1f} ms per batch "
          f"on {config.nproc} proc.")
    if args.serial:
        print(f"serial:         test accuracy {summary['test_accuracy_serial']:.4f}, "
              f"{summary['seconds_per_batch_serial'] * 1e3:.1f} ms per batch; largest parameter difference after "
              f"training {summary['max_parameter_difference']:.2e}")
    print(f"wrote {', '.join(summary['files'].values())} ({time.perf_counter() - start:.1f} s)", flush=True)
    if args.json:
        print(json.dumps(summary, default=float), flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.layer_parallel_command == "train":
        if args.nproc < 1:
            raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
        return run_train(args)
    raise ValueError(f"unknown layer-parallel command {args.layer_parallel_command!r}")  # pragma: no cover
