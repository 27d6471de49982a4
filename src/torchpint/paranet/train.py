"""Training a parareal network (or the original network) with checkpoints that resume exactly.

One loop serves every mode:

* one process: the whole :class:`ParaNet` (or the original network) here;
* ``nproc = N`` processes: rank 0 runs this loop on a :class:`ParaNetHub`,
  ranks 1..N-1 serve their sub-network (:class:`ParaNetWorker`) and take
  optimizer steps and write their checkpoint parts when the hub says so;
* ``nproc = N x replicas``: ``replicas`` such parareal networks, data
  parallel.  Every hub draws the same batches and augmentation and takes
  its shard of each batch; the copies of each part average their gradients
  before stepping (see :mod:`torchpint.paranet.distributed`), so the
  weights stay equal and the step is the whole batch's.  BatchNorm
  statistics are those of the shard.  Replica 0 alone evaluates and writes
  checkpoints (the others' BatchNorm running statistics, used by no
  training step, are not kept).

Gradient accumulation (``micro_batches = M``): each batch (each replica's
shard of it) runs forward and backward in ``M`` consecutive pieces, each
piece's loss weighted by its share of the batch, so the accumulated
gradient is that of the whole batch's mean loss; one optimizer step
follows the last piece (distributed workers step inside that piece's
pass).  Memory for activations shrinks ``M``-fold; BatchNorm normalizes
over each piece, as it does over each replica's shard.

Optimizer: SGD with momentum and weight decay; learning rate per step from
a cosine or step schedule (a pure function of epoch and step, so nothing
about it needs saving).  Data order and augmentation draw from generators
seeded by ``(seed, epoch)``, and every process's global RNG state is saved,
so a run resumed from the checkpoint of epoch ``e`` continues exactly as
the uninterrupted run would have.

Checkpoints (the one format, :mod:`torchpint.run.checkpoint`): every epoch,
``<run>/checkpoints/epoch_XXXX/part<r>.pt`` holds process ``r``'s weights,
buffers and momentum buffers under the full network's names and its RNG
states; the commit (rank 0, after the hub's workers acknowledged writing
theirs) adds the configuration and history.  Parts are merged by name on
loading, so a checkpoint written by N processes resumes in one and the other
way round.  The epoch loop itself is :func:`torchpint.run.train_epochs`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchpint.data import Datasets, load_dataset, random_crop_flip
from torchpint.models import build_model, count_parameters
from torchpint.paranet.distributed import ParaNetHub
from torchpint.paranet.net import ParaNet
from torchpint.run.checkpoint import CheckpointError, Checkpoints, Found, save_atomic, set_rng_state
from torchpint.run.loop import NonFiniteLossError, StepHooks, check_finite, restore_state, train_epochs

__all__ = [
    "NonFiniteLossError",
    "TrainConfig",
    "build_original",
    "build_paranet",
    "load_data",
    "lr_at",
    "train_network",
]

SCHEDULES = ("cosine", "step")
AUGMENTS = ("auto", "none", "crop", "crop-flip")
CMD_SAVE = 10  # custom worker command: write your checkpoint part


@dataclass
class TrainConfig:
    """Everything that defines a training run (picklable, saved in every checkpoint)."""

    model: str = "resnet20-small"
    dataset: str = "digits"
    subnets: int = 2
    iterations: int = 1
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    seed: int = 0
    nproc: int = 1  # subnets x replicas with torch.distributed
    replicas: int = 1  # data-parallel copies of the distributed parareal network
    # gradient accumulation: each batch (shard) runs forward/backward in this many consecutive pieces, then one
    # optimizer step on the whole batch's mean-loss gradient; BatchNorm normalizes over each piece (as DDP over a shard)
    micro_batches: int = 1
    threads: int = 1
    augment: str = "auto"
    balance: str = "time"
    coarse: str = "auto"
    coarse_width: int | None = None
    depth: int | None = None
    width: int | None = None
    image_size: int | None = None
    data_root: str | None = None
    max_train: int | None = None
    max_test: int | None = None
    eval_batch: int = 256
    device: str = "cpu"  # "cuda": one GPU per process (rank r on cuda:r), nccl between processes
    devices: list[str] | None = None  # one process, sub-network j on devices[j % len], the rest on devices[0]
    out: str = "runs/paranet"
    progress: bool = True
    # decided by the caller before workers start (measured balance must be the same everywhere)
    split_points: list[int] | None = None
    input_shape: list[int] = field(default_factory=list)
    num_classes: int = 0

    #: fields that must match for --resume to continue a run exactly
    RESUME_KEYS = (
        "model", "dataset", "subnets", "iterations", "batch_size", "lr", "momentum", "weight_decay", "schedule",
        "seed", "augment", "coarse", "coarse_width", "depth", "width", "image_size", "max_train", "split_points",
        "micro_batches",
    )  # fmt: skip


# ---------------------------------------------------------------------------- data and models
def _is_image_model(name: str) -> bool:
    key = name.lower()
    return key.startswith("vgg") or key.startswith("resnet") and not key.startswith("resnet1d")


def load_data(cfg: TrainConfig) -> Datasets:
    """The data set, shaped for the model family, optionally cut to ``max_train``/``max_test`` samples."""
    name = cfg.dataset.strip().lower()
    model = cfg.model.strip().lower()
    kw: dict[str, Any] = {}
    if name == "digits":
        if _is_image_model(model):
            kw = {"image_size": cfg.image_size or (32 if model.startswith("vgg") else 16), "channels": 1}
        elif cfg.image_size:
            kw = {"image_size": cfg.image_size}
    elif name == "synthetic":
        shape = (1, 40) if model == "resnet1d" else (64,) if model == "mlp" else (3, cfg.image_size or 32, cfg.image_size or 32)
        kw = {"shape": shape, "n": 2048}
    data = load_dataset(name, root=cfg.data_root, **kw)
    if model == "resnet1d" and len(data.input_shape) != 2:
        raise ValueError(f"model resnet1d needs 1-D signals (C, L) such as mnist1d; {name} has shape {data.input_shape}")
    if _is_image_model(model) and len(data.input_shape) != 3:
        raise ValueError(f"model {cfg.model} needs images (C, H, W); {name} has samples of shape {data.input_shape}")
    if cfg.max_train or cfg.max_test:
        from torch.utils.data import TensorDataset

        tr, te = data.train.tensors, data.test.tensors
        ntr, nte = cfg.max_train or len(tr[0]), cfg.max_test or len(te[0])
        data = Datasets(data.name, TensorDataset(tr[0][:ntr], tr[1][:ntr]), TensorDataset(te[0][:nte], te[1][:nte]),
                        data.num_classes, data.input_shape, data.mean, data.std)
    return data


def _model_kwargs(cfg: TrainConfig, input_shape: tuple[int, ...]) -> dict[str, Any]:
    key = cfg.model.strip().lower()
    kw: dict[str, Any] = {}
    if key == "mlp":
        kw["in_features"] = int(np.prod(input_shape))
        if cfg.depth is not None:
            kw["depth"] = cfg.depth
        if cfg.width is not None:
            kw["hidden"] = cfg.width
    elif key == "resnet1d":
        kw["in_length"] = int(input_shape[-1])
        if cfg.depth is not None:
            kw["num_blocks"] = cfg.depth
        if cfg.width is not None:
            kw["channels"] = cfg.width
    else:
        if cfg.depth is not None:
            raise ValueError(f"--depth is for mlp and resnet1d; the depth of {cfg.model} is in its name (resnet<9n+2>)")
        if cfg.width is not None:
            kw["width" if key.startswith("vgg") else "base_width"] = cfg.width
    return kw


def build_original(cfg: TrainConfig) -> nn.Module:
    """The original network, initialized from ``cfg.seed`` (the parareal network starts from the same weights)."""
    torch.manual_seed(cfg.seed)
    shape = tuple(cfg.input_shape)
    return build_model(cfg.model, num_classes=cfg.num_classes, in_channels=shape[0], **_model_kwargs(cfg, shape))


def build_paranet(cfg: TrainConfig) -> ParaNet:
    """The parareal network of ``cfg`` (the original's weights, then the coarse networks, from ``cfg.seed``)."""
    model = build_original(cfg)
    return ParaNet(
        model,
        cfg.subnets,
        input_shape=tuple(cfg.input_shape),
        iterations=cfg.iterations,
        split_points=cfg.split_points,
        balance=cfg.balance,
        coarse=cfg.coarse,
        coarse_width=cfg.coarse_width,
        balance_batch=cfg.batch_size,
    )


def lr_at(cfg: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Learning rate of step ``step`` of epoch ``epoch`` (both 0-based)."""
    if cfg.schedule == "cosine":
        t = (epoch * steps_per_epoch + step) / max(1, cfg.epochs * steps_per_epoch)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))
    drops = sum(epoch >= int(f * cfg.epochs) for f in (0.5, 0.75))
    return cfg.lr * 0.1**drops


def _augmenter(cfg: TrainConfig, shape: tuple[int, ...]) -> Callable[[Tensor, torch.Generator], Tensor] | None:
    mode = cfg.augment
    if mode == "auto":  # CIFAR-style augmentation for the CIFAR-style data sets only
        mode = {"cifar10": "crop-flip", "cifar100": "crop-flip", "svhn": "crop"}.get(cfg.dataset.strip().lower(), "none")
    if mode == "none":
        return None
    if len(shape) != 3:
        raise ValueError(f"--augment {mode} needs images (C, H, W), the data have shape {shape}")
    pad = max(1, shape[-1] // 8)
    flip = mode == "crop-flip"
    return lambda x, g: random_crop_flip(x, g, padding=pad, flip=flip)


def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + stream) % (2**63 - 1)


# ---------------------------------------------------------------------------- checkpoint parts
def _momentum(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, Tensor]:
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                out[names[id(p)]] = buf.detach().cpu().clone()
    return out


def part_state(module_state: dict[str, Tensor], optimizer: torch.optim.Optimizer, names: dict[int, str],
               prefix: str = "") -> dict[str, Any]:
    """One process's checkpoint part: weights and momentum under the full network's names."""
    return {"weights": {prefix + k: v.detach().cpu().clone() for k, v in module_state.items()},
            "momentum": _momentum(optimizer, names)}


def load_part_state(state: dict[str, Any], module_state: dict[str, Tensor], params: dict[str, nn.Parameter],
                    optimizer: torch.optim.Optimizer, prefix: str = "") -> None:
    """Load this process's names (``prefix`` + local name) from merged parts, momentum included."""
    weights, momentum = state.get("weights", {}), state.get("momentum", {})
    missing = [prefix + k for k in module_state if prefix + k not in weights]
    if missing:
        raise CheckpointError(f"the checkpoint lacks {len(missing)} entries of this network, e.g. {missing[:3]}")
    with torch.no_grad():
        for k, t in module_state.items():
            src = weights[prefix + k]
            if src.shape != t.shape:
                raise CheckpointError(f"the checkpoint's {prefix + k} has shape {tuple(src.shape)}, "
                                      f"the network's {tuple(t.shape)}")
            t.copy_(src)
    for k, p in params.items():
        if prefix + k in momentum:
            optimizer.state[p]["momentum_buffer"] = momentum[prefix + k].to(p.device).clone()


def merged_weights(checkpoints: Checkpoints, found: Found) -> dict[str, Tensor]:
    """The whole network's weights from every part of a checkpoint (for the final model file)."""
    return restore_state(checkpoints, found, 0, merge=True)[0]["weights"]


# ---------------------------------------------------------------------------- the loop
def make_sgd(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum and weight decay, fused where torch has the kernel (CPU and CUDA).

    The fused step is one pass over the parameters instead of a handful of
    foreach passes, about 4x faster on CPU; the update is the same formula.
    It matters to the parareal network: each rank's optimizer step sits
    between its backward pass and the next forward pass.
    """
    plist = list(params)
    fused = bool(plist) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in plist)
    return torch.optim.SGD(plist, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)


class _Local:
    """One process holds the whole network (a ParaNet or the original)."""

    replica = 0  # data-parallel replica (only _Hub has others); replica 0 evaluates and checkpoints
    replicas = 1

    def __init__(self, net: nn.Module, cfg: TrainConfig, device: torch.device | None = None) -> None:
        self.net = net
        self.device = device or next(net.parameters()).device
        self.opt = make_sgd(net.parameters(), cfg)

    def shard(self, t: Tensor) -> Tensor:
        """This replica's part of a batch."""
        return t if self.replicas == 1 else t.tensor_split(self.replicas)[self.replica]

    def totals(self, *values: float) -> list[float]:
        """Sums over the replicas (of the epoch's loss sum, hits and sample count)."""
        return list(values)

    def forward(self, x: Tensor, epoch: int, step: int, lr: float | None = None) -> Tensor:
        """The output; ``lr``: a training pass whose optimizer step will use this learning rate."""
        out: Tensor = self.net(x)
        return out

    def after_backward(self) -> None:
        pass

    def step(self, lr: float, epoch: int, step: int) -> None:
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def save(self, epoch: int) -> dict[str, Any]:
        """This process's checkpoint part (the hub first has its workers write theirs)."""
        names = {id(p): n for n, p in self.net.named_parameters()}
        return part_state(self.net.state_dict(), self.opt, names)

    def load(self, state: dict[str, Any]) -> None:
        load_part_state(state, self.net.state_dict(), dict(self.net.named_parameters()), self.opt)

    def close(self) -> None:
        pass


class _Hub(_Local):
    """Rank 0 of a distributed parareal network: the loop drives the workers through the hub."""

    def __init__(self, hub: ParaNetHub, cfg: TrainConfig, replica: int = 0) -> None:
        super().__init__(hub, cfg, hub.device)
        self.hub = hub
        self.replica = replica
        self.replicas = 1 if hub.copies is None else torch.distributed.get_world_size(hub.copies)

    def totals(self, *values: float) -> list[float]:
        if self.hub.copies is None:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.hub.peer.device)
        torch.distributed.all_reduce(t, group=self.hub.copies)
        return [float(v) for v in t.tolist()]

    def forward(self, x: Tensor, epoch: int, step: int, lr: float | None = None) -> Tensor:
        # with lr, the workers step their optimizers as soon as their backward passes are done
        out: Tensor = self.hub(x, epoch=epoch, step=step, lr=lr)
        return out

    def after_backward(self) -> None:
        self.hub.wait()

    def save(self, epoch: int) -> dict[str, Any]:
        self.hub.custom(CMD_SAVE, epoch=epoch)  # every worker writes its part first (acknowledged)
        return super().save(epoch)

    def close(self) -> None:
        self.hub.stop()


def _batches(n: int, batch: int, gen: torch.Generator, replicas: int = 1) -> list[Tensor]:
    perm = torch.randperm(n, generator=gen)
    out = [perm[i : i + batch] for i in range(0, n, batch)]
    if len(out) > 1 and len(out[-1]) < 2 * replicas:  # batch norm cannot train on one sample (per shard)
        out.pop()
    return out


def _pieces(batch: int, replicas: int, micro_batches: int) -> int:
    """How many micro-batches a batch of ``batch`` samples runs in: ``micro_batches``, fewer for a short batch.

    Each piece of the smallest shard keeps at least 2 samples (batch norm
    cannot train on one), and the count depends on the batch alone, so every
    replica runs the same number of passes (the copies' collectives pair up).
    """
    return max(1, min(micro_batches, batch // replicas // 2))


class ParaNetTrainer:
    """One epoch of parareal-network (or original-network) training, for :func:`torchpint.run.train_epochs`.

    Every data-parallel replica's hub runs it; the others' workers serve their hub.  Replica 0
    evaluates; the others return no test metrics.
    """

    merges_parts = True  # parts are merged by name: a checkpoint resumes under another process layout

    def __init__(self, cfg: TrainConfig, runner: _Local, data: Datasets, label: str,
                 hooks: StepHooks | None = None) -> None:
        self.cfg, self.runner, self.label, self.hooks = cfg, runner, label, hooks
        self.x_train, self.y_train = data.train.tensors
        self.x_test, self.y_test = data.test.tensors
        self.augment = _augmenter(cfg, tuple(data.input_shape))
        self.steps = len(_batches(len(self.x_train), cfg.batch_size, torch.Generator().manual_seed(0), runner.replicas))
        self.epochs_done = 0

    def steps_per_epoch(self) -> int:
        return self.steps

    def train_epoch(self, epoch: int, advance: Callable[..., None]) -> dict[str, float]:
        cfg, runner = self.cfg, self.runner
        runner.net.train()
        order = _batches(len(self.x_train), cfg.batch_size,
                         torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch, 0)), runner.replicas)
        aug_gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch, 1))
        loss_sum, correct, seen = 0.0, 0, 0
        lr = cfg.lr
        for step, idx in enumerate(order):
            xb, yb = self.x_train[idx], self.y_train[idx]
            if self.augment is not None:  # the whole batch, on every replica: the same draws as with one replica
                xb = self.augment(xb, aug_gen)
            xb, yb = runner.shard(xb), runner.shard(yb)
            lr = lr_at(cfg, epoch, step, self.steps)
            pieces = _pieces(len(idx), runner.replicas, cfg.micro_batches)
            for piece, (xp, yp) in enumerate(zip(xb.tensor_split(pieces), yb.tensor_split(pieces), strict=True)):
                final = piece == pieces - 1  # the optimizer step (workers: inside this pass) follows the last piece
                out = runner.forward(xp.to(runner.device), epoch, step, lr if final else None)
                yp = yp.to(out.device)
                loss = F.cross_entropy(out, yp)
                if self.hooks is not None:
                    loss = self.hooks.on_loss(loss, epoch, step)
                value = loss.item()
                check_finite(value, label=self.label, epoch=epoch, step=step, lr=lr)
                # the pieces' losses, weighted by their share of the batch, sum to the whole batch's mean
                # (over the replicas too: their gradients are averaged, and shards may be unequal)
                weight = len(yp) * runner.replicas / len(idx)
                if weight != 1.0:
                    loss = loss * weight
                loss.backward()
                loss_sum += value * len(yp)
                correct += int((out.detach().argmax(1) == yp).sum())
                seen += len(yp)
            runner.after_backward()  # the hub: wait for the workers and average with the replicas, once a batch
            runner.step(lr, epoch, step)
            advance(loss=loss_sum / seen, acc=f"{100 * correct / seen:.1f}%")
        loss_sum, hits, count = runner.totals(loss_sum, correct, seen)  # over the replicas' shards
        self.epochs_done = epoch + 1
        return {"lr": lr, "train_loss": loss_sum / count, "train_accuracy": hits / count}

    def evaluate(self) -> dict[str, float]:
        if self.runner.replica != 0:
            return {}
        runner, batch = self.runner, self.cfg.eval_batch
        runner.net.eval()
        loss_sum, correct = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(self.x_test), batch):
                out = runner.forward(self.x_test[i : i + batch].to(runner.device), -1, -1)
                yb = self.y_test[i : i + batch].to(out.device)
                loss_sum += float(F.cross_entropy(out, yb, reduction="sum"))
                correct += int((out.argmax(1) == yb).sum())
        return {"test_loss": loss_sum / len(self.x_test), "test_accuracy": correct / len(self.x_test)}

    def state_dict(self) -> dict[str, Any]:
        return self.runner.save(self.epochs_done)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.runner.load(state)


def train_network(
    cfg: TrainConfig,
    run_dir: Path,
    label: str,
    runner: _Local,
    data: Datasets,
    *,
    resume: bool,
    parts: int = 1,
    hooks: StepHooks | None = None,
    resume_from: Any = None,
    agreed: bool = False,
) -> dict[str, Any]:
    """Train (or continue) one network with the shared loop; returns its history and summary.

    Checkpoints every epoch into ``run_dir/checkpoints`` (``parts`` parts: 1, or N for a
    distributed parareal network, whose workers write theirs when the hub asks).
    ``agreed``: ``resume_from`` is the checkpoint every process already agreed on.
    """
    lead = runner.replica == 0
    extra = {"resume_from": resume_from} if agreed else {}
    trainer = ParaNetTrainer(cfg, runner, data, label, hooks)
    loop = train_epochs(trainer, epochs=cfg.epochs, checkpoints=Checkpoints(run_dir / "checkpoints"),
                        config=config_dict(cfg), resume_keys=TrainConfig.RESUME_KEYS, label=label, resume=resume,
                        part=0 if lead else None, parts=parts, lead=lead, progress=cfg.progress,
                        group=None, **extra)
    runner.close()
    history = loop.history
    times = [h["seconds"] for h in history]
    return {
        "label": label,
        "history": history,
        "final_loss": history[-1]["train_loss"] if history else float("nan"),
        "test_accuracy": history[-1].get("test_accuracy", float("nan")) if history else float("nan"),
        "test_loss": history[-1].get("test_loss", float("nan")) if history else float("nan"),
        "seconds": loop.seconds,
        "seconds_per_epoch": statistics.median(times) if times else float("nan"),
        "mean_seconds_per_epoch": statistics.fmean(times) if times else float("nan"),
        "params": count_parameters(runner.net) if not isinstance(runner, _Hub) else None,
    }


def write_model_file(run_dir: Path, path: Path) -> None:
    """The whole trained network as one state dict (merged from the newest checkpoint's parts)."""
    checkpoints = Checkpoints(run_dir / "checkpoints")
    found = checkpoints.find_latest()
    if found is not None:
        save_atomic(merged_weights(checkpoints, found), path)


# ---------------------------------------------------------------------------- entry points
def train_local(cfg: TrainConfig, run_dir: Path, label: str, original: bool, resume: bool,
                hooks: StepHooks | None = None) -> dict[str, Any]:
    """Train the parareal network (or, with ``original``, the original) in this process."""
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        data = load_data(cfg)
        net = build_original(cfg) if original else build_paranet(cfg)
        if cfg.devices:
            if original:
                net.to(cfg.devices[0])
            else:
                net.to_devices(cfg.devices)  # type: ignore[operator]
        elif cfg.device != "cpu":
            net.to(cfg.device)
        return train_network(cfg, run_dir, label, _Local(net, cfg), data, resume=resume, hooks=hooks)
    finally:
        torch.set_num_threads(previous)


def distributed_worker(cfg: TrainConfig, run_dir: str, label: str, resume: bool,
                       hooks: StepHooks | None = None) -> dict[str, Any] | None:
    """Body of every process of a distributed training run (under :func:`torchpint.run.launch`).

    Every process agrees on the checkpoint to resume first (rank 0 decides); rank 0's split
    points are used everywhere (a measured balance could differ between processes).
    """
    import torch.distributed as dist

    from torchpint.paranet.distributed import Header, ParaNetWorker, replica_groups

    rank = dist.get_rank()
    shared = [cfg.split_points]
    dist.broadcast_object_list(shared, src=0)
    cfg.split_points = shared[0]
    groups = replica_groups(cfg.subnets, cfg.replicas)
    part = groups.part  # this process's part of its replica's network (0: the hub)
    path = Path(run_dir)
    checkpoints = Checkpoints(path / "checkpoints")
    found = checkpoints.agree() if resume else None
    net = build_paranet(cfg)
    if cfg.device == "cuda":
        net.to(torch.device("cuda", torch.cuda.current_device()))
    if part == 0:
        total = count_parameters(net)
        hub = ParaNetHub(net, groups.network, groups.copies)
        del net  # the hub keeps stem, coarse networks, head and sub-network 1 only
        data = load_data(cfg)
        summary = train_network(cfg, path, label, _Hub(hub, cfg, groups.replica), data, resume=resume,
                                parts=cfg.subnets, hooks=hooks, resume_from=found, agreed=True)
        summary["params"] = total
        return summary if rank == 0 else None
    # a worker: its sub-network, its optimizer, its checkpoint part (written by replica 0's only)
    module = net.fine_subnets[part]
    prefix = f"fine_subnets.{part}."
    opt = make_sgd(module.parameters(), cfg)
    if found is not None:
        state, rng = restore_state(checkpoints, found, part, merge=True)
        load_part_state(state, module.state_dict(), dict(module.named_parameters()), opt, prefix)
        if rng is not None:
            set_rng_state(rng)

    def save(header: Header) -> float:
        names = {id(p): prefix + n for n, p in module.named_parameters()}
        checkpoints.write_part(header.epoch, part, cfg.subnets, part_state(module.state_dict(), opt, names, prefix))
        return 1.0

    def on_header(header: Header) -> None:
        if hooks is not None and header.command == 1:  # FORWARD
            hooks.on_step(rank, header.epoch, header.step)

    worker = ParaNetWorker(net, groups.network, optimizer=opt, handlers={CMD_SAVE: save} if groups.replica == 0 else {},
                           on_header=on_header, copies=groups.copies)
    del net  # this process keeps only its sub-network
    worker.serve()
    return None


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The configuration as plain types (what checkpoints and metrics record)."""
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}
