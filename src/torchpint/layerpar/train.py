"""Train a layer-parallel ResNet on a small data set, and the serial network the same way.

``train_worker(config)`` runs on every rank (spawned by :func:`torchpint.run.launch.run_workers`,
or in-process for one process): it builds the network from the seed (the same on every
rank), trains it with SGD on the same batches in the same order, each forward pass an MGRIT
solve across the layers and each backward pass an adjoint MGRIT solve, and returns the
history and the final parameters (rank 0).  ``train_serial(config)`` trains the equivalent
``nn.Sequential`` (the same initial weights, batches and optimizer) with plain autograd.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from torchpint.data import load_dataset
from torchpint.data.base import Datasets
from torchpint.engine.comm import SerialComm
from torchpint.engine.mgrit import ConfigError, parse_relax
from torchpint.layerpar.layout import batch_shard, layer_data_comms, layer_data_ranks, plan_layout
from torchpint.layerpar.network import LayerParallel

ARCHS = ("conv", "mlp")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class LayerParallelConfig:
    dataset: str = "digits"
    arch: str = "conv"  # conv: 3x3 convolutions + tanh; mlp: linear + tanh
    width: int = 8  # channels (conv) or features (mlp)
    layers: int = 32
    T: float = 2.0
    levels: int = 2
    cf: int = 4
    relax: str = "FCF"
    cycle: str = "V"
    nested: bool = True
    fwd_max_iter: int = 10
    bwd_max_iter: int = 10
    fwd_tol: float = 1e-9
    bwd_tol: float = 1e-9
    epochs: int = 3
    batch: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    seed: int = 0
    dtype: str = "float64"
    nproc: int = 1  # all processes: layer ranks x data_parallel
    data_parallel: int = 1  # data groups, each one layer-parallel network on its shard of the batch
    progress: bool = True
    checkpoint_dir: str | None = None  # a checkpoint per rank after every epoch
    resume: bool = False  # continue from the checkpoints in checkpoint_dir

    def validate(self) -> None:
        """Everything that can be checked before a worker starts; ValueError with the reason."""
        if self.arch not in ARCHS:
            raise ConfigError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name in ("width", "layers", "levels", "epochs", "batch", "nproc", "data_parallel", "fwd_max_iter",
                     "bwd_max_iter"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.levels > 1 and self.cf < 2:
            raise ConfigError(f"cf must be >= 2, got {self.cf}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if not (0 <= self.momentum < 1):
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (self.T > 0 and math.isfinite(self.T)):
            raise ConfigError(f"T must be > 0, got {self.T}")
        for name in ("fwd_tol", "bwd_tol"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ConfigError(f"{name.replace('_', '-')} must be a finite number >= 0, got {getattr(self, name)}")
        if self.cycle.upper() not in ("V", "F"):
            raise ConfigError(f"cycle must be V or F, got {self.cycle!r}")
        parse_relax(self.relax)
        layer_data_ranks(self.nproc, self.data_parallel)
        if self.batch < self.data_parallel:
            raise ConfigError(f"a batch of {self.batch} examples cannot be split over {self.data_parallel} "
                              f"data-parallel groups: use --batch >= {self.data_parallel}")
        plan_layout(self.layers, self.levels, self.cf, self.nproc // self.data_parallel)

    def check_last_batch(self, examples: int) -> None:
        """Every batch of an epoch, the last one too, must have an example for each data group."""
        last = examples % self.batch
        if 0 < last < self.data_parallel:
            raise ConfigError(f"the last batch of an epoch has {last} examples ({examples} % {self.batch}), fewer "
                              f"than the {self.data_parallel} data-parallel groups: choose another --batch")


def load_layer_parallel_data(config: LayerParallelConfig) -> Datasets:
    data = load_dataset(config.dataset)
    if config.arch == "conv" and len(data.input_shape) != 3:
        raise ConfigError(
            f"arch conv needs image inputs (C, H, W); {config.dataset} has shape {data.input_shape}: use --arch mlp"
        )
    return data


def build_layer_parallel_resnet(
    config: LayerParallelConfig, input_shape: tuple[int, ...], num_classes: int, comm: Any = None, data_comm: Any = None
) -> LayerParallel:
    """The layer-parallel ResNet (same weights on every rank for a given seed)."""
    torch.manual_seed(config.seed)
    w = config.width
    if config.arch == "conv":
        channels, height, width = input_shape
        factory = lambda: nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.Tanh())
        opening: nn.Module = nn.Sequential(nn.Conv2d(channels, w, 3, padding=1), nn.Tanh())
        closing: nn.Module = nn.Sequential(nn.Flatten(), nn.Linear(w * height * width, num_classes))
    else:
        features = int(np.prod(input_shape))
        factory = lambda: nn.Sequential(nn.Linear(w, w), nn.Tanh())
        opening = nn.Sequential(nn.Flatten(), nn.Linear(features, w), nn.Tanh())
        closing = nn.Linear(w, num_classes)
    net = LayerParallel(
        factory, config.layers, config.T, opening=opening, closing=closing, levels=config.levels, cf=config.cf,
        relax=config.relax, cycle=config.cycle, nested=config.nested, fwd_max_iter=config.fwd_max_iter,
        bwd_max_iter=config.bwd_max_iter, fwd_tol=config.fwd_tol, bwd_tol=config.bwd_tol, comm=comm,
        data_comm=data_comm,
    )
    return net.to(DTYPES[config.dtype])


def _loader(data: Datasets, config: LayerParallelConfig) -> DataLoader:
    generator = torch.Generator().manual_seed(config.seed)
    return DataLoader(data.train, batch_size=config.batch, shuffle=True, generator=generator)


def _progress(iterable: Any, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm  # type: ignore[import-untyped]

    return tqdm(iterable, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def _accuracy(model: nn.Module, x: torch.Tensor | None, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def _sgd_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor | None, y: torch.Tensor,
    data_parallel: tuple[LayerParallel, float] | None = None,
) -> tuple[float, int]:
    """One training step (the same for the layer-parallel and the serial network): loss, hits.

    ``data_parallel = (net, share)``: ``x, y`` are this data group's shard (``share`` of the
    batch); the gradients, loss and hits of the shards are combined in one all-reduce."""
    out = model(x)
    loss = F.cross_entropy(out, y)
    optimizer.zero_grad()
    loss.backward()
    log = torch.stack([loss.detach().double(), (out.argmax(1) == y).sum().double()])
    if data_parallel is not None:
        net, share = data_parallel
        log = net.average_gradients(share, log * torch.tensor([share, 1.0], dtype=torch.float64))
    optimizer.step()
    return float(log[0]), int(log[1])


def train_worker(config: LayerParallelConfig) -> dict[str, Any]:
    """Layer-parallel training on this rank (call on every rank); rank 0 returns the history."""
    data = load_layer_parallel_data(config)
    dtype = DTYPES[config.dtype]
    layer_comm, data_comm = layer_data_comms(config.data_parallel)
    net = build_layer_parallel_resnet(config, data.input_shape, data.num_classes, layer_comm, data_comm)
    lead = net.rank == 0  # the first layer rank of every data group: it has the input and the output
    reporter = lead and data_comm.rank == 0
    optimizer = torch.optim.SGD(list(net.local_parameters()), lr=config.lr, momentum=config.momentum)
    x_test, y_test = data.test.tensors
    x_test = x_test.to(dtype)
    history: list[dict[str, Any]] = []
    losses: list[float] = []
    batches, first_epoch, elapsed = 0, 1, 0.0
    checkpoint = _checkpoint_path(config, net.rank)
    if config.resume:
        state = _load_checkpoint(checkpoint, net, optimizer)
        history, losses, batches, elapsed = state["history"], state["losses"], state["batches"], state["seconds"]
        first_epoch = state["epoch"] + 1
        if reporter and config.progress:
            print(f"  resumed from {config.checkpoint_dir} after epoch {state['epoch']}", flush=True)
    start = time.perf_counter() - elapsed
    for epoch in range(first_epoch, config.epochs + 1):
        fwd_iters, bwd_iters, correct, seen, epoch_loss = [], [], 0, 0, 0.0
        bar = _progress(_loader(data, config), f"layer-parallel epoch {epoch}/{config.epochs}", config.progress and reporter)
        for xb, yb in bar:
            x_shard, share = batch_shard(xb, data_comm)
            y_shard, _ = batch_shard(yb, data_comm)
            value, hits = _sgd_step(net, optimizer, x_shard.to(dtype) if lead else None, y_shard, (net, share))
            batches += 1
            losses.append(value)
            epoch_loss += value * len(yb)
            correct += hits
            seen += len(yb)
            fwd_iters.append(net.last_stats["forward"]["iterations"])
            bwd_iters.append(net.last_stats["backward"]["iterations"])
            bar.set_postfix(loss=f"{value:.3f}", fwd_it=fwd_iters[-1], bwd_it=bwd_iters[-1])
        test_acc = _accuracy(net, x_test if lead else None, y_test)
        history.append({
            "epoch": epoch,
            "train_loss": epoch_loss / seen,
            "train_accuracy": correct / seen,
            "test_accuracy": test_acc,
            "forward_iterations_mean": float(np.mean(fwd_iters)),
            "backward_iterations_mean": float(np.mean(bwd_iters)),
            "forward_iterations_max": int(max(fwd_iters)),
            "backward_iterations_max": int(max(bwd_iters)),
            "seconds": time.perf_counter() - start,
        })
        if config.progress and reporter:
            h = history[-1]
            print(f"  layer-parallel epoch {epoch}: loss {h['train_loss']:.4f}, train acc {h['train_accuracy']:.4f}, "
                  f"test acc {test_acc:.4f}, MGRIT iterations fwd {h['forward_iterations_mean']:.2f} "
                  f"bwd {h['backward_iterations_mean']:.2f}", flush=True)
        if checkpoint is not None and data_comm.rank == 0:  # the data groups' copies are identical
            _save_checkpoint(checkpoint, net, optimizer, {
                "epoch": epoch, "history": history, "losses": losses, "batches": batches,
                "seconds": time.perf_counter() - start,
            })
    seconds = time.perf_counter() - start
    net.gather_parameters()
    result: dict[str, Any] = {"rank": net.rank, "data_group": data_comm.rank,
                              "owned_layers": [net.owned_layers.start, net.owned_layers.stop]}
    if lead:
        result.update({
            "history": history,
            "batch_losses": losses,
            "seconds": seconds,
            "seconds_per_batch": seconds / max(batches, 1),
            "last_forward": net.last_stats.get("forward"),
            "state": {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()},
        })
    return result


def _checkpoint_path(config: LayerParallelConfig, rank: int) -> Path | None:
    return None if config.checkpoint_dir is None else Path(config.checkpoint_dir) / f"rank{rank}.pt"


def _owned_state(net: LayerParallel) -> dict[str, torch.Tensor]:
    """This rank's own parameters by name (the other ranks' layers are stale copies here)."""
    owned = {id(p) for p in net.local_parameters()}
    return {name: p.detach().clone() for name, p in net.named_parameters() if id(p) in owned}


def _save_checkpoint(path: Path, net: LayerParallel, optimizer: torch.optim.Optimizer, extra: dict[str, Any]) -> None:
    """Write atomically (temporary file, then rename): a run killed mid-write keeps the previous epoch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"params": _owned_state(net), "optimizer": optimizer.state_dict(), **extra}, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path | None, net: LayerParallel, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    if path is None:
        raise ConfigError("--resume needs a checkpoint folder (--out of the run to continue)")
    if not path.exists():
        raise ConfigError(f"nothing to resume: {path} does not exist (was the run started with the same --nproc?)")
    state = torch.load(path, weights_only=False)
    params = dict(net.named_parameters())
    with torch.no_grad():
        for name, value in state["params"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    return state


def train_serial(config: LayerParallelConfig) -> dict[str, Any]:
    """The equivalent ``nn.Sequential`` trained the same way with plain autograd (one process)."""
    data = load_layer_parallel_data(config)
    dtype = DTYPES[config.dtype]
    net = build_layer_parallel_resnet(config, data.input_shape, data.num_classes, comm=SerialComm())  # one process, even inside a distributed job
    model = net.to_sequential()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    x_test, y_test = data.test.tensors
    x_test = x_test.to(dtype)
    history, losses = [], []
    start = time.perf_counter()
    batches = 0
    for epoch in range(1, config.epochs + 1):
        correct, seen, epoch_loss = 0, 0, 0.0
        for xb, yb in _progress(_loader(data, config), f"serial epoch {epoch}/{config.epochs}", config.progress):
            value, hits = _sgd_step(model, optimizer, xb.to(dtype), yb)
            batches += 1
            losses.append(value)
            epoch_loss += value * len(yb)
            correct += hits
            seen += len(yb)
        history.append({"epoch": epoch, "train_loss": epoch_loss / seen, "train_accuracy": correct / seen,
                        "test_accuracy": _accuracy(model, x_test, y_test), "seconds": time.perf_counter() - start})
    seconds = time.perf_counter() - start
    return {"history": history, "batch_losses": losses, "seconds": seconds, "seconds_per_batch": seconds / max(batches, 1),
            "state": {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}}


@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread, as every worker has: comparable timings, no oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def max_parameter_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def train_and_compare(config: LayerParallelConfig, *, serial: bool = True) -> dict[str, Any]:
    """Layer-parallel training over ``config.nproc`` processes, then (optionally) the serial network."""
    from torchpint.run.launch import run_workers

    config.validate()
    config.check_last_batch(len(load_layer_parallel_data(config).train))  # fail here, not in a worker
    if config.nproc > 1:
        parallel = run_workers(train_worker, config.nproc, (config,))[0]
    else:
        with one_thread():
            parallel = train_worker(config)
    out: dict[str, Any] = {"config": asdict(config), "layer_parallel": parallel}
    if serial:
        with one_thread():
            reference = train_serial(config)
        out["serial"] = reference
        out["max_parameter_difference"] = max_parameter_difference(parallel["state"], reference["state"])
        out["test_accuracy_serial"] = reference["history"][-1]["test_accuracy"]
    out["test_accuracy_layer_parallel"] = parallel["history"][-1]["test_accuracy"]
    return out
