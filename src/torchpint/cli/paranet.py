"""``torchpint paranet``: build, inspect and train parareal neural networks.

``torchpint paranet info --model resnet164 --subnets 4`` prints the split,
the shapes at every interface, parameter and FLOP counts and the balance.
``torchpint paranet train --model resnet164 --subnets 4 --dataset digits --epochs E --nproc P [--compare]``
trains the parareal network (in one process, or one sub-network per
process with ``--nproc N``; ``--replicas R`` runs R data-parallel copies
of it on ``N x R`` processes; ``--micro-batches M`` accumulates each
batch's gradient over M pieces), checkpoints every epoch (``--resume``
continues), and with ``--compare`` trains the original network the same way
and reports both.  Outputs go to the run folder (``--out``): metrics.json,
metrics.csv, curves.png and the checkpoints.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from torchpint.cli.plots import integer_ticks, save_figure
from torchpint.paranet.train import (
    AUGMENTS,
    SCHEDULES,
    TrainConfig,
    build_paranet,
    distributed_worker,
    latest_checkpoint,
    load_data,
    train_local,
    write_json,
)

__all__ = ["add_arguments", "run", "run_training"]

BALANCES = ("flops", "params", "time", "blocks")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="resnet20-small",
                   help="network: resnet<9n+2>[-small] (e.g. resnet164, resnet1001), vgg16[-small], resnet1d, mlp")
    p.add_argument("--subnets", "-N", type=int, default=2, help="number N of fine sub-networks")
    p.add_argument("--K", "--iterations", dest="iterations", type=int, default=1, help="parareal iterations K (default 1)")
    p.add_argument("--balance", choices=BALANCES, default=None,
                   help="split the blocks by measured time (train's default), FLOPs (info's default), "
                        "parameters or block count")
    p.add_argument("--coarse", choices=("auto", "conv", "linear"), default="auto", help="coarse network family")
    p.add_argument("--coarse-width", type=int, help="hidden width of the coarse networks (default: channels / 8)")
    p.add_argument("--depth", type=int, help="blocks of mlp / resnet1d")
    p.add_argument("--width", type=int, help="width: ResNet base width, VGG first width, resnet1d channels, mlp hidden")
    p.add_argument("--num-classes", type=int, default=10, help="classes (info without --dataset)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="paranet_command", required=True)
    train = sub.add_parser("train", help="train a parareal network (and, with --compare, the original)")
    _common(train)
    train.add_argument("--dataset", default="digits", help="digits, mnist1d, synthetic, cifar10, cifar100, svhn, mnist")
    train.add_argument("--data-root", help="folder with the file-based data sets (default ./data)")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    train.add_argument("--momentum", type=float, default=0.9)
    train.add_argument("--weight-decay", type=float, default=5e-4)
    train.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="cosine, or step (x0.1 at 50%% and 75%%)")
    train.add_argument("--augment", choices=AUGMENTS, default="auto",
                       help="auto: random crops and flips for CIFAR, crops for SVHN, none otherwise "
                            "(crop padding = side / 8)")
    train.add_argument("--image-size", type=int, help="digits: pad to this side (default 16, 32 for VGG)")
    train.add_argument("--max-train", type=int, help="use only the first M training samples")
    train.add_argument("--max-test", type=int, help="use only the first M test samples")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--nproc", type=int, default=None,
                       help="processes: 1 (whole network here; the default) or N (one sub-network each, "
                            "torch.distributed), N x R with --replicas R (the default then)")
    train.add_argument("--replicas", type=int, default=1,
                       help="R data-parallel copies of the distributed parareal network, each on 1/R of every "
                            "batch, gradients averaged (BatchNorm statistics per shard)")
    train.add_argument("--micro-batches", type=int, default=1,
                       help="gradient accumulation: run each batch (each replica's shard) in M consecutive pieces, "
                            "forward and backward, then one optimizer step on the whole batch's gradient; "
                            "activation memory / M, BatchNorm statistics per piece (default 1)")
    train.add_argument("--threads", type=int, default=1, help="intra-op threads per process (default 1)")
    train.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                       help="cuda: one GPU per process (rank r on GPU r), nccl between processes")
    train.add_argument("--devices", help="one process, sub-networks spread over these devices, e.g. cuda:0,cuda:1 "
                                         "(CUDA streams overlap them)")
    train.add_argument("--out", help="run folder (default runs/paranet-<model>-<dataset>-N<N>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a run")
    train.add_argument("--compare", action="store_true", help="also train the original network the same way")
    train.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    train.add_argument("--inject-fault", help=argparse.SUPPRESS)  # nan:EPOCH:STEP or kill:EPOCH:STEP:RANK
    info = sub.add_parser("info", help="print the split, shapes, parameters and FLOPs of a parareal network")
    _common(info)
    info.add_argument("--dataset", help="take the input shape and classes from this data set")
    info.add_argument("--data-root")
    info.add_argument("--image-size", type=int)
    info.add_argument("--input-shape", help="sample shape, e.g. 3,32,32 (default: CIFAR-sized for image models)")
    info.add_argument("--json", action="store_true", help="print the info as JSON")


def _parse_fault(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    parts = text.split(":")
    try:  # EPOCH and STEP count from 1, as the progress messages do
        kind = parts[0]
        fault = {"kind": kind, "epoch": int(parts[1]), "step": int(parts[2]) - 1}
        if kind == "kill":
            fault["rank"] = int(parts[3]) if len(parts) > 3 else 1
    except (IndexError, ValueError):
        raise ValueError(f"--inject-fault must be nan:EPOCH:STEP or kill:EPOCH:STEP[:RANK], got {text!r}") from None
    if kind not in ("nan", "kill"):
        raise ValueError(f"--inject-fault kind must be nan or kill, got {kind!r}")
    return fault


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    out = args.out or f"runs/paranet-{args.model}-{args.dataset}-N{args.subnets}"
    nproc = args.nproc if args.nproc is not None else args.subnets * args.replicas if args.replicas > 1 else 1
    return TrainConfig(
        model=args.model, dataset=args.dataset, subnets=args.subnets, iterations=args.iterations,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, schedule=args.schedule, seed=args.seed, nproc=nproc, replicas=args.replicas,
        micro_batches=args.micro_batches, threads=args.threads, augment=args.augment, balance=args.balance or "time",
        coarse=args.coarse, coarse_width=args.coarse_width, depth=args.depth, width=args.width, image_size=args.image_size,
        data_root=args.data_root, max_train=args.max_train, max_test=args.max_test, out=out,
        progress=args.progress, fault=_parse_fault(args.inject_fault), device=args.device,
        devices=[d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None,
    )  # fmt: skip


def validate(cfg: TrainConfig) -> None:
    """Refuse bad input before anything heavy starts."""
    if cfg.subnets < 1:
        raise ValueError(f"--subnets must be >= 1, got {cfg.subnets}")
    if cfg.iterations < 1:
        raise ValueError(f"--K must be >= 1, got {cfg.iterations}")
    if cfg.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {cfg.epochs}")
    if cfg.batch_size < 2:
        raise ValueError(f"--batch-size must be >= 2 (batch norm), got {cfg.batch_size}")
    if not cfg.lr > 0:
        raise ValueError(f"--lr must be > 0, got {cfg.lr}")
    if cfg.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {cfg.threads}")
    if cfg.replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {cfg.replicas}")
    if cfg.replicas > 1 and cfg.nproc != cfg.subnets * cfg.replicas:
        raise ValueError(f"--nproc must be N x R = {cfg.subnets} x {cfg.replicas} = {cfg.subnets * cfg.replicas} "
                         f"with --replicas {cfg.replicas} (one process per sub-network per replica), got {cfg.nproc}")
    if cfg.batch_size < 2 * cfg.replicas:
        raise ValueError(f"--batch-size must be >= 2 x replicas = {2 * cfg.replicas} (batch norm, per shard), "
                         f"got {cfg.batch_size}")
    if cfg.micro_batches < 1:
        raise ValueError(f"--micro-batches must be >= 1, got {cfg.micro_batches}")
    shard = cfg.batch_size // cfg.replicas  # the samples of a (replica's share of a) batch
    if cfg.micro_batches > shard // 2:
        where = f"the {shard}-sample shard of each replica" if cfg.replicas > 1 else f"the {shard}-sample batch"
        raise ValueError(f"--micro-batches must be <= {shard // 2}: each micro-batch of {where} needs >= 2 samples "
                         f"(batch norm), got {cfg.micro_batches}")
    if cfg.replicas == 1 and cfg.nproc not in (1, cfg.subnets):
        raise ValueError(f"--nproc must be 1 (one process) or N={cfg.subnets} (one sub-network per process), "
                         f"got {cfg.nproc}")
    if (cfg.device == "cuda" or any(d.startswith("cuda") for d in cfg.devices or [])) and not torch.cuda.is_available():
        raise ValueError("CUDA was asked for (--device cuda / --devices cuda:...) but torch sees no GPU")
    if cfg.devices and cfg.nproc > 1:
        raise ValueError("--devices is for one process; with --nproc N use --device cuda (one GPU per process)")
    for name in ("max_train", "max_test"):
        value = getattr(cfg, name)
        if value is not None and value < 2:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 2, got {value}")


def prepare(cfg: TrainConfig, resume: bool, overwrite: bool) -> dict[str, Any]:
    """Validate, load the data once for its shape, build the network once for its split; set up the run folder."""
    validate(cfg)
    run_dir = Path(cfg.out)
    saved_split = None
    if resume:
        ckpt = latest_checkpoint(run_dir / "paranet")
        if ckpt is not None:
            saved_split = torch.load(ckpt / "meta.pt", map_location="cpu", weights_only=False)["config"]["split_points"]
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise ValueError(f"{run_dir} already holds a run: --resume continues it, --overwrite starts afresh, "
                             f"or choose another --out")
        for sub in ("paranet", "original"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
    data = load_data(cfg)
    cfg.input_shape = list(data.input_shape)
    cfg.num_classes = data.num_classes
    cfg.split_points = saved_split
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # a measured balance sees what one worker sees
    try:
        net = build_paranet(cfg)
    finally:
        torch.set_num_threads(previous)
    cfg.split_points = [int(b) for b in net.bounds[1:-1]]
    run_dir.mkdir(parents=True, exist_ok=True)
    return {"info": net.info(), "info_text": net.format_info(), "data": {
        "name": data.name, "train": len(data.train), "test": len(data.test), "input_shape": list(data.input_shape),
        "num_classes": data.num_classes}}


def run_training(cfg: TrainConfig, compare: bool = False, resume: bool = False, overwrite: bool = False,
                 quiet: bool = False) -> dict[str, Any]:
    """Train the parareal network (and the original with ``compare``); write metrics, CSV and curves."""
    from torchpint.dist import init_from_env, launched_by_torchrun, run_workers

    prep = prepare(cfg, resume, overwrite)
    run_dir = Path(cfg.out)
    info = prep["info"]
    label = f"parareal N={cfg.subnets}" + (f" x {cfg.replicas} replicas" if cfg.replicas > 1 else "")
    micro = f", micro-batches={cfg.micro_batches}" if cfg.micro_batches > 1 else ""
    if not quiet:
        print(f"torchpint paranet train: {cfg.model} on {cfg.dataset} ({prep['data']['train']} train / "
              f"{prep['data']['test']} test samples, shape {tuple(cfg.input_shape)}), N={cfg.subnets}, K={cfg.iterations}, "
              f"nproc={cfg.nproc}, replicas={cfg.replicas}{micro}, {cfg.threads} thread(s) per process, run folder {run_dir}", flush=True)
        print(prep["info_text"], flush=True)
    if cfg.nproc > 1 and launched_by_torchrun():
        init_from_env("nccl" if cfg.device == "cuda" else "gloo")
        paranet = distributed_worker(cfg, str(run_dir / "paranet"), label, resume)
        if torch.distributed.get_rank() != 0:
            return {}
    elif cfg.nproc > 1:
        paranet = run_workers(distributed_worker, cfg.nproc, (cfg, str(run_dir / "paranet"), label, resume),
                              threads=cfg.threads, backend="nccl" if cfg.device == "cuda" else "gloo")[0]
    else:
        paranet = train_local(cfg, run_dir / "paranet", label, original=False, resume=resume)
    if paranet is None:  # not rank 0 (cannot happen: rank 0 returns the summary)
        return {}
    runs: dict[str, dict[str, Any]] = {"paranet": paranet}
    if compare:
        runs["original"] = train_local(cfg, run_dir / "original", "original", original=True, resume=resume)
    results = summarize(cfg, info, runs, prep["data"])
    write_outputs(run_dir, results)
    if not quiet:
        print()
        print(format_table(results))
        print(f"\nmetrics: {run_dir / 'metrics.json'}, {run_dir / 'metrics.csv'}; curves: {run_dir / 'curves.png'}")
    return results


def summarize(cfg: TrainConfig, info: dict[str, Any], runs: dict[str, dict[str, Any]], data: dict[str, Any]) -> dict[str, Any]:
    paranet = runs["paranet"]
    coarse_macs = info["coarse_flops_per_forward"]
    overhead = {
        "coarse_params": info["coarse_params"],
        "coarse_param_fraction": info["coarse_param_fraction"],
        "coarse_macs_per_sample": coarse_macs,
        "coarse_mac_fraction": coarse_macs / info["original_flops"] if info["original_flops"] else 0.0,
        "max_coarse_fraction_of_subnetwork": info["max_coarse_flop_fraction"],
    }
    results: dict[str, Any] = {
        "config": asdict(cfg), "data": data, "info": info, "runs": runs, "coarse_overhead": overhead,
        "workers": cfg.nproc, "threads_per_worker": cfg.threads,
    }  # fmt: skip
    if "original" in runs:
        orig = runs["original"]
        results["comparison"] = {
            "accuracy_difference_points": 100 * (paranet["test_acc"] - orig["test_acc"]),
            "speedup_per_epoch": orig["seconds_per_epoch"] / paranet["seconds_per_epoch"],
            "params_ratio": paranet["params"] / orig["params"] if orig["params"] else float("nan"),
        }
    return results


def format_table(results: dict[str, Any]) -> str:
    cfg = results["config"]
    runs = results["runs"]
    rows = [("network", "workers", "test acc", "params", "s/epoch", "speedup")]
    base = runs.get("original", {}).get("seconds_per_epoch")
    micro = f", {cfg['micro_batches']} micro-batches" if cfg.get("micro_batches", 1) > 1 else ""  # both, trained alike
    if "original" in runs:
        o = runs["original"]
        rows.append((f"original{micro}", "1", f"{100 * o['test_acc']:.2f}%", f"{o['params']:,}", f"{o['seconds_per_epoch']:.3f}", "1.00x"))
    p = runs["paranet"]
    speed = f"{base / p['seconds_per_epoch']:.2f}x" if base else "-"
    replicas = f" x{cfg['replicas']} replicas" if cfg.get("replicas", 1) > 1 else ""
    rows.append((f"parareal N={cfg['subnets']} K={cfg['iterations']}{replicas}{micro}", str(cfg["nproc"]), f"{100 * p['test_acc']:.2f}%",
                 f"{p['params']:,}", f"{p['seconds_per_epoch']:.3f}", speed))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    ov = results["coarse_overhead"]
    lines.append(
        f"coarse-network overhead: {ov['coarse_params']:,} parameters (+{100 * ov['coarse_param_fraction']:.2f}%), "
        f"{100 * ov['coarse_mac_fraction']:.2f}% of the original's multiply-adds per forward pass, "
        f"largest coarse network = {100 * ov['max_coarse_fraction_of_subnetwork']:.1f}% of its sub-network"
    )
    lines.append(f"s/epoch: median training time of an epoch, {cfg['threads']} thread(s) per process; "
                 f"test accuracy after epoch {len(p['history'])}")
    if "comparison" in results:
        c = results["comparison"]
        lines.append(f"accuracy difference (parareal - original): {c['accuracy_difference_points']:+.2f} points")
    return "\n".join(lines)


def write_outputs(run_dir: Path, results: dict[str, Any]) -> None:
    write_json(run_dir / "metrics.json", results)
    keys = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "eval_seconds"]
    with open(run_dir / "metrics.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["network", *keys])
        for name, run in results["runs"].items():
            for h in run["history"]:
                writer.writerow([name, *(h[k] for k in keys)])
    plot_curves(results, run_dir / "curves.png")


def plot_curves(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = results["config"]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    names = {"paranet": f"parareal N={cfg['subnets']}, K={cfg['iterations']}", "original": "original"}
    for key, run in results["runs"].items():
        epochs = [h["epoch"] for h in run["history"]]
        line = ax_acc.plot(epochs, [100 * h["test_acc"] for h in run["history"]], "o-", label=f"{names[key]} (test)")[0]
        ax_acc.plot(epochs, [100 * h["train_acc"] for h in run["history"]], "s--", markersize=4, color=line.get_color(),
                    label=f"{names[key]} (train)")
        ax_loss.plot(epochs, [h["test_loss"] for h in run["history"]], "o-", color=line.get_color(), label=f"{names[key]} (test)")
        ax_loss.plot(epochs, [h["train_loss"] for h in run["history"]], "s--", markersize=4, color=line.get_color(),
                     label=f"{names[key]} (train)")
    integer_ticks(ax_acc)
    integer_ticks(ax_loss)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.set_yscale("log")
    for ax in (ax_acc, ax_loss):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    shape = "x".join(str(s) for s in cfg.get("input_shape") or [])
    fig.suptitle(f"{cfg['model']} on {cfg['dataset']} ({shape}): parareal N={cfg['subnets']}, K={cfg['iterations']} on "
                 f"{cfg['nproc']} proc. vs the original; batch {cfg['batch_size']}, lr {cfg['lr']:g}, {cfg['schedule']}")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _info_shape(args: argparse.Namespace) -> tuple[tuple[int, ...], int]:
    if args.input_shape:
        try:
            shape = tuple(int(s) for s in args.input_shape.split(",") if s.strip())
        except ValueError:
            raise ValueError(f"--input-shape must be comma-separated integers, got {args.input_shape!r}") from None
        if not shape or min(shape) < 1:
            raise ValueError(f"--input-shape must be positive integers, got {args.input_shape!r}")
        return shape, args.num_classes
    if args.dataset:
        cfg = TrainConfig(model=args.model, dataset=args.dataset, data_root=args.data_root, image_size=args.image_size)
        data = load_data(cfg)
        return tuple(data.input_shape), data.num_classes
    key = args.model.lower()
    if key == "resnet1d":
        return (1, 40), args.num_classes
    if key == "mlp":
        return (64,), args.num_classes
    return (3, 32, 32), args.num_classes


def run_info(args: argparse.Namespace) -> int:
    if args.subnets < 1:
        raise ValueError(f"--subnets must be >= 1, got {args.subnets}")
    if args.iterations < 1:
        raise ValueError(f"--K must be >= 1, got {args.iterations}")
    shape, classes = _info_shape(args)
    cfg = TrainConfig(model=args.model, subnets=args.subnets, iterations=args.iterations, balance=args.balance or "flops",
                      coarse=args.coarse, coarse_width=args.coarse_width, depth=args.depth, width=args.width,
                      input_shape=list(shape), num_classes=classes)
    net = build_paranet(cfg)
    if args.json:
        print(json.dumps(net.info()))
    else:
        print(f"{args.model}, input {shape}, {classes} classes")
        print(net.format_info())
    return 0


def run(args: argparse.Namespace) -> int:
    if args.paranet_command == "info":
        return run_info(args)
    cfg = config_from_args(args)
    run_training(cfg, compare=args.compare, resume=args.resume, overwrite=args.overwrite)
    sys.stdout.flush()
    return 0
