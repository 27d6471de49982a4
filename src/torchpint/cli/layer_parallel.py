"""``torchpint layer-parallel``: ResNets whose forward and backward passes are MGRIT solves across the layers.

    torchpint layer-parallel train --layers 32 --levels 2 --cf 4 --epochs 3 --nproc 2 --dataset digits --out runs/lp
    torchrun --nnodes 2 --nproc-per-node 1 ... -m torchpint layer-parallel train ... --out runs/lp

Trains the layer-parallel ResNet (the layers split over the processes, forward pass by MGRIT,
backward pass by adjoint MGRIT), then the equivalent serial ``nn.Sequential`` from the same
initial weights on the same batches, and reports both (loss, test accuracy, the largest
parameter difference).  The run folder ``--out`` holds ``run.json``, ``checkpoints/`` (every
epoch; ``--resume`` continues), ``metrics.json``, ``metrics.csv``, ``curves.png`` and
``model.pt`` (the trained weights); ``--json`` prints a summary as the last line.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torchpint.layerpar.train import (
    ARCHS,
    DTYPES,
    LayerParallelConfig,
    load_layer_parallel_data,
    train_layer_parallel,
    write_outputs,
)
from torchpint.run import launch, launched_by_torchrun, open_run_folder, print_json_line, world_size
from torchpint.run.ranks import open_run_folder_on_ranks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="layer_parallel_command", required=True)
    train = sub.add_parser("train", help="train a layer-parallel ResNet and the serial network the same way")
    defaults = LayerParallelConfig()
    train.add_argument("--layers", type=int, default=defaults.layers, help="residual layers (multiple of cf^(levels-1))")
    train.add_argument("--levels", type=int, default=defaults.levels, help="MGRIT levels (1 = exact serial pass, pipelined)")
    train.add_argument("--cf", type=int, default=defaults.cf, help="coarsening factor")
    train.add_argument("--epochs", type=int, default=defaults.epochs)
    train.add_argument("--nproc", type=int, default=None,
                       help="processes: layer ranks x --data-parallel (the layers are split over nproc / D)")
    train.add_argument("--data-parallel", type=int, default=defaults.data_parallel, metavar="D",
                       help="data groups, each a layer-parallel network on its shard of the batch (divides --nproc)")
    train.add_argument("--dataset", default=defaults.dataset, help="data set (digits; mlp: any generated set)")
    train.add_argument("--out", default="runs/layer-parallel", help="the run folder: run.json, checkpoints/, metrics.json, metrics.csv, curves.png, model.pt")
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
    train.add_argument("--final-relax", action=argparse.BooleanOptionalAction, default=defaults.final_relax,
                       help="end each multilevel forward solve with C- and F-relaxation (closer to serial at few iterations)")
    train.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=defaults.warm_start,
                       help="start each forward/adjoint solve from the previous batch's solution")
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
                       help="continue the run in --out from its newest complete checkpoint (same settings)")
    train.add_argument("--overwrite", action="store_true", help="replace the run that --out holds")


def config_from_args(args: argparse.Namespace, nproc: int) -> LayerParallelConfig:
    return LayerParallelConfig(
        dataset=args.dataset, arch=args.arch, width=args.width, layers=args.layers, T=args.T, levels=args.levels,
        cf=args.cf, relax=args.relax, cycle=args.cycle, nested=args.nested, fwd_max_iter=args.fwd_max_iter,
        bwd_max_iter=args.bwd_max_iter, fwd_tol=args.fwd_tol, bwd_tol=args.bwd_tol, epochs=args.epochs,
        batch=args.batch, lr=args.lr, momentum=args.momentum, seed=args.seed, dtype=args.dtype, nproc=nproc,
        data_parallel=args.data_parallel, progress=args.progress, final_relax=args.final_relax,
        warm_start=args.warm_start,
    )


def rank_main(config: LayerParallelConfig, out: str, resume: bool, overwrite: bool, serial: bool,
              folder_opened: bool) -> dict[str, Any] | None:
    """Every rank: (under torchrun) open the run folder on rank 0, train; rank 0 writes the outputs."""
    folder = None
    if not folder_opened:  # torchrun: the ranks are the launchers; rank 0 locks the folder, all learn the outcome
        folder, resume = open_run_folder_on_ranks(out, resume=resume, overwrite=overwrite,
                                                  record={"command": "layer-parallel train", "config": asdict(config)})
    try:
        result = train_layer_parallel(config, out, resume=resume, serial=serial)
        return None if result is None else write_outputs(result, Path(out))
    finally:
        if folder is not None:
            folder.close()


def run_train(args: argparse.Namespace) -> int:
    nproc = world_size(args.nproc)
    config = config_from_args(args, nproc)
    config.validate()  # bad input: one clear line (exit 2) before any worker starts
    config.check_last_batch(len(load_layer_parallel_data(config).train))
    torchrun = launched_by_torchrun()
    lead = not torchrun or os.environ.get("RANK", "0") == "0"
    if lead:
        print(f"torchpint layer-parallel train: {config.layers}-layer {config.arch} ResNet (width {config.width}, "
              f"T={config.T:g}) on {config.dataset}, MGRIT {config.levels} levels, cf={config.cf}, {config.relax}, "
              f"{config.cycle}-cycle, fwd/bwd max_iter {config.fwd_max_iter}/{config.bwd_max_iter}, "
              f"tol {config.fwd_tol:g}/{config.bwd_tol:g}, {config.epochs} epochs, batch {config.batch}, "
              f"SGD lr {config.lr:g} momentum {config.momentum:g}, {config.dtype}, {config.nproc} processes "
              f"({config.nproc // config.data_parallel} layer ranks x {config.data_parallel} data groups)", flush=True)
    start = time.perf_counter()
    folder = None
    if not torchrun:  # this process launches the workers: it holds the run folder for the run's life
        folder = open_run_folder(args.out, resume=args.resume, overwrite=args.overwrite,
                                 record={"command": "layer-parallel train", "config": asdict(config)})
    try:
        resume = folder.resume if folder is not None else args.resume
        summary = launch(rank_main, (config, args.out, resume, args.overwrite, args.serial, folder is not None),
                         nproc=nproc)
    finally:
        if folder is not None:
            folder.close()
    if summary is None:  # not rank 0: rank 0 reports
        return 0
    print(f"layer-parallel: training loss {summary['final_loss']:.6f}, test accuracy {summary['test_accuracy']:.4f}, "
          f"MGRIT iterations per batch fwd {summary['forward_iterations_mean']:.2f} / bwd "
          f"{summary['backward_iterations_mean']:.2f}, {summary['seconds']:.2f} s on {summary['world_size']} processes")
    if args.serial:
        print(f"serial:         training loss {summary['final_loss_serial']:.6f}, test accuracy "
              f"{summary['test_accuracy_serial']:.4f}, {summary['seconds_serial']:.2f} s; largest parameter "
              f"difference after training {summary['max_parameter_difference']:.2e}")
    print(f"wrote {', '.join(summary['files'].values())} ({time.perf_counter() - start:.1f} s)", flush=True)
    if args.json:
        print_json_line(summary)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.layer_parallel_command == "train":
        return run_train(args)
    raise ValueError(f"unknown layer-parallel command {args.layer_parallel_command!r}")  # pragma: no cover
