"""Train a layer-parallel ResNet on a small data set, and the serial network the same way.

``train_layer_parallel(config, out, resume=...)`` runs on every rank of the process group that
the ``layer-parallel train`` command (or a test) started; it starts no process.  It builds the
network from the seed (the same on every rank), trains it with SGD on the same batches in the
same order, each forward pass an MGRIT solve across the layers and each backward pass an
adjoint MGRIT solve, with torchpint's one training loop (:func:`torchpint.run.train_epochs`:
checkpoints every epoch, resume, summary lines, the non-finite stop).  Rank 0 then trains the
equivalent ``nn.Sequential`` (the same initial weights, batches and optimizer) with plain
autograd through the same loop, and returns both histories and final weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from torchpint.data import load_dataset
from torchpint.data.base import Datasets
from torchpint.engine.comm import Comm, SerialComm
from torchpint.engine.mgrit import ConfigError, parse_relax
from torchpint.engine.state import flatten, unflatten
from torchpint.layerpar.layout import batch_shard, layer_data_comms, layer_data_ranks, plan_layout
from torchpint.layerpar.network import LayerParallel
from torchpint.run import Checkpoints, check_finite, train_epochs
from torchpint.run.checkpoint import save_atomic
from torchpint.run.fit import write_training_outputs

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
    progress: bool = True  # progress bars (the per-epoch summary lines are printed either way)
    final_relax: bool = True  # each multilevel forward solve ends with a C- and an F-relaxation (as XBraid)
    warm_start: bool = False  # each solve starts from the previous batch's solution (same batch shape)

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
        data_comm=data_comm, final_relax=config.final_relax, warm_start=config.warm_start,
    )
    return net.to(DTYPES[config.dtype])


# The settings that determine the trained weights: a run resumed with any other value is refused
# (the epoch count may grow; progress bars and the run folder may change).
RESUME_KEYS = ("dataset", "arch", "width", "layers", "T", "levels", "cf", "relax", "cycle", "nested", "fwd_max_iter",
               "bwd_max_iter", "fwd_tol", "bwd_tol", "batch", "lr", "momentum", "seed", "dtype", "nproc",
               "data_parallel", "final_relax", "warm_start")


def _loader(data: Datasets, config: LayerParallelConfig) -> DataLoader:
    # The same seeded order every epoch, for the layer-parallel and the serial network alike.
    generator = torch.Generator().manual_seed(config.seed)
    return DataLoader(data.train, batch_size=config.batch, shuffle=True, generator=generator)


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


class ResNetTrainer:
    """One epoch of SGD on the layer-parallel ResNet (``net``, every rank) or on its serial
    ``nn.Sequential`` (``net=None``): what :func:`torchpint.run.train_epochs` drives.

    The two see the same batches in the same order from the same initial weights, so their
    losses agree to the MGRIT tolerance.
    """

    def __init__(self, config: LayerParallelConfig, data: Datasets, model: nn.Module, *,
                 net: LayerParallel | None = None, data_comm: Comm | None = None) -> None:
        self.config, self.data, self.model, self.net = config, data, model, net
        self.data_comm = data_comm if data_comm is not None else SerialComm()
        self.dtype = DTYPES[config.dtype]
        self.lead = net is None or net.rank == 0  # has the input and the output
        params = list(net.local_parameters()) if net is not None else list(model.parameters())
        self.params = params
        self.optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
        self.label = "layer-parallel" if net is not None else "serial"

    def steps_per_epoch(self) -> int:
        return -(-len(self.data.train) // self.config.batch)

    def train_epoch(self, epoch: int, advance: Any) -> dict[str, Any]:
        losses: list[float] = []
        fwd_iters: list[int] = []
        bwd_iters: list[int] = []
        correct, seen, loss_sum = 0, 0, 0.0
        for step, (xb, yb) in enumerate(_loader(self.data, self.config)):
            if self.net is not None:
                x_shard, share = batch_shard(xb, self.data_comm)
                y_shard, _ = batch_shard(yb, self.data_comm)
                x = x_shard.to(self.dtype) if self.lead else None
                value, hits = _sgd_step(self.net, self.optimizer, x, y_shard, (self.net, share))
                fwd_iters.append(self.net.last_stats["forward"]["iterations"])
                bwd_iters.append(self.net.last_stats["backward"]["iterations"])
            else:
                value, hits = _sgd_step(self.model, self.optimizer, xb.to(self.dtype), yb)
            check_finite(value, label=self.label, epoch=epoch, step=step, lr=self.config.lr)
            losses.append(value)
            loss_sum += value * len(yb)
            correct += hits
            seen += len(yb)
            if fwd_iters:
                advance(loss=value, fwd_it=fwd_iters[-1], bwd_it=bwd_iters[-1])
            else:
                advance(loss=value)
        record: dict[str, Any] = {"train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                                  "batch_losses": losses}
        if fwd_iters:
            record.update({
                "forward_iterations_mean": float(np.mean(fwd_iters)),
                "backward_iterations_mean": float(np.mean(bwd_iters)),
                "forward_iterations_max": int(max(fwd_iters)),
                "backward_iterations_max": int(max(bwd_iters)),
            })
        return record

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        x, y = self.data.test.tensors
        out = self.model(x.to(self.dtype) if self.lead else None)  # every layer rank gets rank 0's output
        return {"test_loss": float(F.cross_entropy(out, y)),
                "test_accuracy": float((out.argmax(1) == y).double().mean())}

    def state_dict(self) -> dict[str, Any]:
        """This rank's own parameters (by position in the optimizer) and the optimizer's state."""
        return {"params": [p.detach().clone() for p in self.params], "optimizer": self.optimizer.state_dict()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore this rank's part; a data-parallel copy (it writes no part) takes data group 0's copy."""
        if self.data_comm.rank == 0:
            saved = state["params"]
            if len(saved) != len(self.params) or any(a.shape != b.shape for a, b in zip(saved, self.params)):
                raise ConfigError("the checkpoint's parameters do not fit this network (another layout?)")
            for p, value in zip(self.params, saved):
                p.copy_(value)
            self.optimizer.load_state_dict(state["optimizer"])
        if self.data_comm.size > 1:
            self._copy_from_first_data_group()

    def _copy_from_first_data_group(self) -> None:
        """The copies of data group 0's layers take its parameters and momentum (collective over the data group)."""
        buffers = [self.optimizer.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in self.params]
        tensors = [p.data for p in self.params] + [b for b in buffers if b is not None]
        mine = flatten(tensors) if self.data_comm.rank == 0 else None
        for target, value in zip(tensors, unflatten(self.data_comm.broadcast(mine), tensors)):
            target.copy_(value)


def _weights(net: LayerParallel) -> dict[str, torch.Tensor]:
    """Every weight of ``net`` by name (on rank 0 after ``gather_parameters``): the final model file."""
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def train_layer_parallel(config: LayerParallelConfig, out: str, *, resume: bool, serial: bool = True,
                         print_fn: Any = None) -> dict[str, Any] | None:
    """Layer-parallel training on this rank (call it on every rank), then, on rank 0, the serial
    network the same way; checkpoints every epoch in ``out/checkpoints`` (the serial network's in
    ``out/serial/checkpoints``), and with ``resume`` continues from them.  Rank 0 returns the results."""
    data = load_layer_parallel_data(config)
    config.check_last_batch(len(data.train))
    layer_comm, data_comm = layer_data_comms(config.data_parallel)
    net = build_layer_parallel_resnet(config, data.input_shape, data.num_classes, layer_comm, data_comm)
    trainer = ResNetTrainer(config, data, net, net=net, data_comm=data_comm)
    distributed = dist.is_available() and dist.is_initialized()
    lead = (dist.get_rank() if distributed else 0) == 0
    settings = asdict(config)
    loop = train_epochs(
        trainer, epochs=config.epochs, checkpoints=Checkpoints(Path(out) / "checkpoints"), config=settings,
        label="layer-parallel", resume=resume, resume_keys=RESUME_KEYS,
        part=net.rank if data_comm.rank == 0 else None, parts=layer_comm.size, lead=lead,
        barrier=dist.barrier if distributed else None, progress=config.progress, print_fn=print_fn,
    )
    net.gather_parameters()  # collective: rank 0 then holds every layer's trained weights
    # The serial reference runs on rank 0 alone; its checkpoint lookup needs a group of rank 0 only
    # (created collectively, by every rank).
    solo = dist.new_group([0]) if distributed else None
    if not lead:
        return None
    result: dict[str, Any] = {"config": settings, "layer_parallel": {
        "history": loop.history, "seconds": loop.seconds, "resumed_from_epoch": loop.start_epoch, "notes": loop.notes,
        "state": _weights(net), "last_forward": net.last_stats.get("forward")}}
    if serial:
        with one_thread():
            reference = build_layer_parallel_resnet(config, data.input_shape, data.num_classes, comm=SerialComm())
            model = reference.to_sequential()
            serial_loop = train_epochs(
                ResNetTrainer(config, data, model), epochs=config.epochs,
                checkpoints=Checkpoints(Path(out) / "serial" / "checkpoints"), config=settings, label="serial",
                resume=resume, resume_keys=RESUME_KEYS, group=solo, progress=config.progress, print_fn=print_fn,
            )
        result["serial"] = {"history": serial_loop.history, "seconds": serial_loop.seconds,
                            "state": _weights(reference)}  # the Sequential shares the reference's layers
        result["max_parameter_difference"] = max_parameter_difference(result["layer_parallel"]["state"],
                                                                      result["serial"]["state"])
    return result


@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread, as every worker has: comparable timings, no oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def max_parameter_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready summary of :func:`train_layer_parallel`'s result (no weights, no per-batch losses).

    ``final_loss`` is the last epoch's mean training loss, ``test_accuracy`` a fraction, ``seconds``
    the layer-parallel epochs' wall-clock time (see :mod:`torchpint.run.report`).
    """
    lp = result["layer_parallel"]
    history = [{k: v for k, v in h.items() if k != "batch_losses"} for h in lp["history"]]
    last = history[-1]
    batches = sum(len(h["batch_losses"]) for h in lp["history"])
    config = result["config"]
    out: dict[str, Any] = {
        "world_size": config["nproc"],
        "seconds": lp["seconds"],
        "final_loss": last["train_loss"],
        "test_accuracy": last["test_accuracy"],
        "test_loss": last["test_loss"],
        "config": config,
        "resumed_from_epoch": lp["resumed_from_epoch"],
        "forward_iterations_mean": float(np.mean([h["forward_iterations_mean"] for h in history])),
        "backward_iterations_mean": float(np.mean([h["backward_iterations_mean"] for h in history])),
        "seconds_per_batch": sum(h["seconds"] for h in history) / max(batches, 1),
        "history": history,
    }
    if "serial" in result:
        serial = [{k: v for k, v in h.items() if k != "batch_losses"} for h in result["serial"]["history"]]
        out.update({
            "final_loss_serial": serial[-1]["train_loss"],
            "test_accuracy_serial": serial[-1]["test_accuracy"],
            "max_parameter_difference": result["max_parameter_difference"],
            "seconds_serial": result["serial"]["seconds"],
            "seconds_per_batch_serial": sum(h["seconds"] for h in serial) / max(batches, 1),
            "history_serial": serial,
        })
    return out


def write_outputs(result: dict[str, Any], out: Path) -> dict[str, Any]:
    """Rank 0: ``metrics.json`` (the summary and every batch's loss), ``metrics.csv``, ``curves.png``
    and ``model.pt`` (the trained weights, ``torch.load(..., weights_only=True)`` into
    :func:`build_layer_parallel_resnet`'s network); returns the summary with the file names."""
    summary = summarize(result)
    runs = {"layer-parallel": summary["history"]}
    if "serial" in result:
        runs["serial"] = summary["history_serial"]
    c = result["config"]
    metrics = {**summary, "batch_losses": [x for h in result["layer_parallel"]["history"] for x in h["batch_losses"]],
               "batch_losses_serial": [x for h in result.get("serial", {}).get("history", []) for x in h["batch_losses"]]}
    write_training_outputs(out, metrics, runs, title=f"{c['layers']}-layer {c['arch']} ResNet on {c['dataset']}: MGRIT "
                           f"{c['levels']} levels, cf {c['cf']}, {c['nproc']} processes")
    save_atomic(result["layer_parallel"]["state"], out / "model.pt")
    summary["files"] = {name: str(out / name) for name in ("metrics.json", "metrics.csv", "curves.png", "model.pt")}
    return summary
