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
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from torchpint.cli.options import at_least, in_range, positive
from torchpint.errors import ConfigError
from torchpint.paranet.train import (
    AUGMENTS,
    SCHEDULES,
    TrainConfig,
    build_paranet,
    config_dict,
    distributed_worker,
    load_data,
    train_local,
    write_model_file,
)
from torchpint.run.checkpoint import Checkpoints
from torchpint.run.fit import write_training_outputs
from torchpint.run.folder import open_run_folder, will_resume
from torchpint.run.launch import launch, launched_by_torchrun, world_size
from torchpint.run.launch import rank as launch_rank
from torchpint.run.loop import StepHooks
from torchpint.run.report import print_json_line
from torchpint.testing.faults import parse_training_fault

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
    p.add_argument("--split-points", type=_split_points, metavar="B[,B...]",
                   help="the first block of sub-networks 2..N, e.g. 18 (instead of --balance): a measured balance "
                        "can split differently from run to run; a run's JSON and run.json record the split it used")
    p.add_argument("--coarse", choices=("auto", "conv", "linear"), default="auto", help="coarse network family")
    p.add_argument("--coarse-width", type=int, help="hidden width of the coarse networks (default: channels / 8)")
    p.add_argument("--depth", type=int, help="blocks of mlp / resnet1d")
    p.add_argument("--width", type=int, help="width: ResNet base width, VGG first width, resnet1d channels, mlp hidden")
    p.add_argument("--num-classes", type=int, default=10, help="classes (info without --dataset)")


def _split_points(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"block indices separated by commas, e.g. 18 or 10,20, got {text!r}") from None


def _built(cfg: TrainConfig) -> Any:
    """``build_paranet(cfg)``; split points that do not fit the network are one line (ConfigError)."""
    try:
        return build_paranet(cfg)
    except ValueError as error:
        if cfg.split_points is None:
            raise
        raise ConfigError(f"--split-points {','.join(map(str, cfg.split_points))}: {error}") from None


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
                            "torch.distributed), N x R with --replicas R (the default then); under torchrun, "
                            "torchrun's world size")
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
    train.add_argument("--no-progress", dest="progress", action="store_false",
                       help="no progress bars (the per-epoch summary lines stay)")
    train.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    train.add_argument("--inject-fault", help=argparse.SUPPRESS)  # nan:EPOCH:STEP or kill:EPOCH:STEP:RANK
    info = sub.add_parser("info", help="print the split, shapes, parameters and FLOPs of a parareal network")
    _common(info)
    info.add_argument("--dataset", help="take the input shape and classes from this data set")
    info.add_argument("--data-root")
    info.add_argument("--image-size", type=int)
    info.add_argument("--input-shape", help="sample shape, e.g. 3,32,32 (default: CIFAR-sized for image models)")
    info.add_argument("--json", action="store_true", help="print the info as JSON")


def _one_split_rule(args: argparse.Namespace) -> None:
    if args.split_points is not None and args.balance is not None:
        raise ConfigError("give --split-points or --balance, not both (the split points are the split)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The configuration; ``nproc`` is torchrun's world size under torchrun (a disagreeing --nproc is refused)."""
    _one_split_rule(args)
    out = args.out or f"runs/paranet-{args.model}-{args.dataset}-N{args.subnets}"
    if args.nproc is None and not launched_by_torchrun():
        nproc = args.subnets * args.replicas if args.replicas > 1 else 1
    else:
        nproc = world_size(args.nproc)
    return TrainConfig(
        model=args.model, dataset=args.dataset, subnets=args.subnets, iterations=args.iterations,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, schedule=args.schedule, seed=args.seed, nproc=nproc, replicas=args.replicas,
        micro_batches=args.micro_batches, threads=args.threads, augment=args.augment, balance=args.balance or "time",
        coarse=args.coarse, coarse_width=args.coarse_width, depth=args.depth, width=args.width, image_size=args.image_size,
        data_root=args.data_root, max_train=args.max_train, max_test=args.max_test, device=args.device,
        devices=[d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None,
        out=out, progress=args.progress, split_points=args.split_points,
    )  # fmt: skip


def validate_network(cfg: TrainConfig) -> None:
    """The options that shape the network (train and info)."""
    at_least("--subnets", cfg.subnets, 1)
    at_least("--K", cfg.iterations, 1)
    for option, value in (("--width", cfg.width), ("--depth", cfg.depth), ("--coarse-width", cfg.coarse_width),
                          ("--image-size", cfg.image_size)):
        if value is not None:
            at_least(option, value, 1)


def validate(cfg: TrainConfig) -> None:
    """Refuse bad input before anything heavy starts."""
    validate_network(cfg)
    at_least("--epochs", cfg.epochs, 1)
    at_least("--batch-size", cfg.batch_size, 2, why="batch norm")
    positive("--lr", cfg.lr)
    in_range("--momentum", cfg.momentum, 0.0, 1.0, high_open=True)
    at_least("--weight-decay", cfg.weight_decay, 0.0)
    at_least("--threads", cfg.threads, 1)
    at_least("--replicas", cfg.replicas, 1)
    at_least("--micro-batches", cfg.micro_batches, 1)
    if cfg.batch_size < 2 * cfg.replicas:
        raise ConfigError(f"--batch-size must be >= 2 x replicas = {2 * cfg.replicas} (batch norm, per shard), "
                          f"got {cfg.batch_size}")
    shard = cfg.batch_size // cfg.replicas  # the samples of a (replica's share of a) batch
    if cfg.micro_batches > shard // 2:
        where = f"the {shard}-sample shard of each replica" if cfg.replicas > 1 else f"the {shard}-sample batch"
        raise ConfigError(f"--micro-batches must be <= {shard // 2}: each micro-batch of {where} needs >= 2 samples "
                          f"(batch norm), got {cfg.micro_batches}")
    world_size(cfg.nproc if not launched_by_torchrun() else None, allowed=_usable_world(cfg))
    if (cfg.device == "cuda" or any(d.startswith("cuda") for d in cfg.devices or [])) and not torch.cuda.is_available():
        raise ConfigError("CUDA was asked for (--device cuda / --devices cuda:...) but torch sees no GPU")
    if cfg.devices and cfg.nproc > 1:
        raise ConfigError("--devices is for one process; with --nproc N use --device cuda (one GPU per process)")
    for option, value in (("--max-train", cfg.max_train), ("--max-test", cfg.max_test)):
        if value is not None:
            at_least(option, value, 2)


def _usable_world(cfg: TrainConfig) -> Callable[[int], str | None]:
    def reason(size: int) -> str | None:
        if cfg.replicas > 1:
            need = cfg.subnets * cfg.replicas
            return None if size == need else (
                f"with --replicas {cfg.replicas} it must be N x R = {cfg.subnets} x {cfg.replicas} = {need} "
                f"(one process per sub-network per replica)")
        return None if size in (1, cfg.subnets) else (
            f"it must be 1 (one process) or N={cfg.subnets} (one sub-network per process)")

    return reason


def prepare(cfg: TrainConfig, resume: bool) -> dict[str, Any]:
    """Validate, load the data once for its shape, build the network once for its split (and info).

    Resuming without ``--split-points``, the split comes from the checkpoint (a measured balance
    could differ); split points given that differ from the run's are refused by the resume check.
    """
    validate(cfg)
    saved_split = cfg.split_points
    if resume and saved_split is None:
        found = Checkpoints(Path(cfg.out) / "paranet" / "checkpoints").find_latest()
        if found is not None:
            saved_split = found.config.get("split_points")
    data = load_data(cfg)
    cfg.input_shape = list(data.input_shape)
    cfg.num_classes = data.num_classes
    cfg.split_points = saved_split
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # a measured balance sees what one worker sees
    try:
        net = _built(cfg)
    finally:
        torch.set_num_threads(previous)
    cfg.split_points = [int(b) for b in net.bounds[1:-1]]
    return {"info": net.info(), "info_text": net.format_info(), "data": {
        "name": data.name, "train": len(data.train), "test": len(data.test), "input_shape": list(data.input_shape),
        "num_classes": data.num_classes}}


def run_training(cfg: TrainConfig, compare: bool = False, resume: bool = False, overwrite: bool = False,
                 quiet: bool = False, hooks: StepHooks | None = None) -> dict[str, Any]:
    """Train the parareal network (and the original with ``compare``); write metrics, CSV, curves, model files.

    Returns the results on rank 0 (``{}`` on the other ranks under torchrun).
    """
    run_dir = Path(cfg.out)
    resume = will_resume(run_dir, resume=resume, overwrite=overwrite)
    prep = prepare(cfg, resume)
    lead = launch_rank() == 0
    info = prep["info"]
    label = f"parareal N={cfg.subnets}" + (f" x {cfg.replicas} replicas" if cfg.replicas > 1 else "")
    micro = f", micro-batches={cfg.micro_batches}" if cfg.micro_batches > 1 else ""
    folder = open_run_folder(run_dir, resume=resume, overwrite=overwrite,
                             record={"command": "paranet train", "config": config_dict(cfg)}) if lead else None
    try:
        if lead and not quiet:
            print(f"torchpint paranet train: {cfg.model} on {cfg.dataset} ({prep['data']['train']} train / "
                  f"{prep['data']['test']} test samples, shape {tuple(cfg.input_shape)}), N={cfg.subnets}, "
                  f"K={cfg.iterations}, world size {cfg.nproc}, replicas={cfg.replicas}{micro}, {cfg.threads} thread(s) "
                  f"per process, run folder {run_dir}", flush=True)
            print(prep["info_text"], flush=True)
        if cfg.nproc > 1:
            paranet = launch(distributed_worker, (cfg, str(run_dir / "paranet"), label, resume, hooks), nproc=cfg.nproc,
                             threads=cfg.threads, backend="nccl" if cfg.device == "cuda" else "gloo")
        else:
            paranet = train_local(cfg, run_dir / "paranet", label, original=False, resume=resume, hooks=hooks)
        if not lead:
            return {}
        write_model_file(run_dir / "paranet", run_dir / "model.pt")
        runs: dict[str, dict[str, Any]] = {"paranet": paranet}
        if compare:
            runs["original"] = train_local(cfg, run_dir / "original", "original", original=True, resume=resume)
            write_model_file(run_dir / "original", run_dir / "original_model.pt")
        results = summarize(cfg, info, runs, prep["data"])
        write_training_outputs(run_dir, results, {_run_names(cfg)[k]: r["history"] for k, r in runs.items()},
                               title=f"{cfg.model} on {cfg.dataset}")
    finally:
        if folder is not None:
            folder.close()
    if not quiet:
        print()
        print(format_table(results))
        print(f"\nmetrics: {run_dir / 'metrics.json'}, {run_dir / 'metrics.csv'}; curves: {run_dir / 'curves.png'}; "
              f"model: {run_dir / 'model.pt'}")
    return results


def _run_names(cfg: TrainConfig) -> dict[str, str]:
    return {"paranet": f"parareal N={cfg.subnets}, K={cfg.iterations}", "original": "original"}


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
        "command": "paranet train", "world_size": cfg.nproc, "threads_per_process": cfg.threads,
        "seconds": paranet["seconds"], "final_loss": paranet["final_loss"], "test_accuracy": paranet["test_accuracy"],
        "test_loss": paranet["test_loss"], "model_file": str(Path(cfg.out) / "model.pt"),
        "config": config_dict(cfg), "data": data, "info": info, "runs": runs, "coarse_overhead": overhead,
    }  # fmt: skip
    if "original" in runs:
        orig = runs["original"]
        results["comparison"] = {
            "accuracy_difference": paranet["test_accuracy"] - orig["test_accuracy"],
            "speedup_per_epoch": orig["seconds_per_epoch"] / paranet["seconds_per_epoch"],
            "params_ratio": paranet["params"] / orig["params"] if orig["params"] else float("nan"),
        }
    return results


JSON_KEYS = ("command", "version", "world_size", "seconds", "final_loss", "test_accuracy", "test_loss", "model_file")


def json_summary(results: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` line: the key results (the whole record is metrics.json)."""
    out = {k: results[k] for k in JSON_KEYS if k in results}
    out["epochs"] = len(results["runs"]["paranet"]["history"])
    out["run_folder"] = results["config"]["out"]
    if "original" in results["runs"]:
        o = results["runs"]["original"]
        out["original"] = {"final_loss": o["final_loss"], "test_accuracy": o["test_accuracy"], "seconds": o["seconds"]}
    return out


def format_table(results: dict[str, Any]) -> str:
    cfg = results["config"]
    runs = results["runs"]
    rows = [("network", "processes", "test acc", "params", "s/epoch", "speedup")]
    base = runs.get("original", {}).get("seconds_per_epoch")
    micro = f", {cfg['micro_batches']} micro-batches" if cfg.get("micro_batches", 1) > 1 else ""  # both, trained alike
    if "original" in runs:
        o = runs["original"]
        rows.append((f"original{micro}", "1", f"{100 * o['test_accuracy']:.2f}%", f"{o['params']:,}",
                     f"{o['seconds_per_epoch']:.3f}", "1.00x"))
    p = runs["paranet"]
    speed = f"{base / p['seconds_per_epoch']:.2f}x" if base else "-"
    replicas = f" x{cfg['replicas']} replicas" if cfg.get("replicas", 1) > 1 else ""
    rows.append((f"parareal N={cfg['subnets']} K={cfg['iterations']}{replicas}{micro}", str(cfg["nproc"]),
                 f"{100 * p['test_accuracy']:.2f}%", f"{p['params']:,}", f"{p['seconds_per_epoch']:.3f}", speed))
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
        lines.append(f"accuracy difference (parareal - original): {100 * c['accuracy_difference']:+.2f} points")
    return "\n".join(lines)


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
    _one_split_rule(args)
    cfg = TrainConfig(model=args.model, subnets=args.subnets, iterations=args.iterations, balance=args.balance or "flops",
                      coarse=args.coarse, coarse_width=args.coarse_width, depth=args.depth, width=args.width,
                      image_size=args.image_size, split_points=args.split_points)
    validate_network(cfg)
    at_least("--num-classes", args.num_classes, 1)
    shape, classes = _info_shape(args)
    cfg.input_shape, cfg.num_classes = list(shape), classes
    net = _built(cfg)
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
    hooks = parse_training_fault(args.inject_fault)
    results = run_training(cfg, compare=args.compare, resume=args.resume, overwrite=args.overwrite, hooks=hooks)
    if results and args.json:
        print_json_line(json_summary(results))
    sys.stdout.flush()
    return 0
