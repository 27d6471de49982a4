"""``fit``: train your own model on your own ``DataLoader`` with the loop and checkpoints the CLIs use.

Example::

    from torchpint.run import fit

    result = fit(model, train_loader, epochs=5, out="runs/mine", test_loader=test_loader,
                 optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    # runs/mine: run.json, checkpoints/, metrics.json, metrics.csv, curves.png, model.pt
    model.load_state_dict(torch.load("runs/mine/model.pt", weights_only=True))

``fit(..., resume=True)`` continues from the newest complete checkpoint (model, optimizer, RNG
states, history) and, when the data order comes from torch's global RNG (``shuffle=True``
without a ``generator``) or is fixed, ends with the same weights as the uninterrupted run.
A folder that holds a run is never overwritten without ``overwrite=True``; a folder another
run is using is refused.  Runs in this process (the model may be a parareal network
(:class:`torchpint.paranet.ParaNet`) or anything else that is an ``nn.Module``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchpint.run.checkpoint import Checkpoints, save_atomic
from torchpint.run.folder import open_run_folder
from torchpint.run.loop import check_finite, train_epochs
from torchpint.run.report import plot_history, write_csv, write_json

__all__ = ["fit", "write_training_outputs"]

HISTORY_KEYS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds", "eval_seconds")


class _ModelTrainer:
    def __init__(self, model: nn.Module, loader: Iterable[Any], test_loader: Iterable[Any] | None,
                 optimizer: torch.optim.Optimizer, loss_fn: Callable[[Tensor, Tensor], Tensor],
                 device: torch.device) -> None:
        self.model, self.loader, self.test_loader = model, loader, test_loader
        self.optimizer, self.loss_fn, self.device = optimizer, loss_fn, device

    def steps_per_epoch(self) -> int:
        try:
            return len(self.loader)  # type: ignore[arg-type]
        except TypeError:
            return 0

    def train_epoch(self, epoch: int, advance: Callable[..., None]) -> dict[str, float]:
        self.model.train()
        loss_sum, hits, seen = 0.0, 0, 0
        for step, (x, y) in enumerate(self.loader):
            x, y = x.to(self.device), y.to(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            out = self.model(x)
            loss = self.loss_fn(out, y)
            value = float(loss.item())
            check_finite(value, label="fit", epoch=epoch, step=step)
            loss.backward()
            self.optimizer.step()
            loss_sum += value * len(y)
            if out.dim() == 2 and y.dim() == 1 and not y.is_floating_point():
                hits += int((out.detach().argmax(1) == y).sum())
            seen += len(y)
            advance(loss=loss_sum / seen)
        record = {"train_loss": loss_sum / max(1, seen)}
        if hits or seen:
            record["train_accuracy"] = hits / max(1, seen)
        return record

    def evaluate(self) -> dict[str, float]:
        if self.test_loader is None:
            return {}
        self.model.eval()
        loss_sum, hits, seen = 0.0, 0, 0
        with torch.no_grad():
            for x, y in self.test_loader:
                x, y = x.to(self.device), y.to(self.device)
                out = self.model(x)
                loss_sum += float(self.loss_fn(out, y)) * len(y)
                if out.dim() == 2 and y.dim() == 1 and not y.is_floating_point():
                    hits += int((out.argmax(1) == y).sum())
                seen += len(y)
        return {"test_loss": loss_sum / max(1, seen), "test_accuracy": hits / max(1, seen)}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


def write_training_outputs(out: Path, results: Mapping[str, Any], runs: Mapping[str, list[dict[str, Any]]],
                           title: str = "") -> None:
    """``metrics.json`` (``results``), ``metrics.csv`` (one row per run and epoch) and ``curves.png``."""
    write_json(out / "metrics.json", results)
    rows = [[name, *(r.get(k) for k in HISTORY_KEYS)] for name, history in runs.items() for r in history]
    write_csv(out / "metrics.csv", ["run", *HISTORY_KEYS], rows)
    if any(runs.values()):
        plot_history(runs, out / "curves.png", title=title)


def fit(
    model: nn.Module,
    train_loader: Iterable[Any],
    *,
    epochs: int,
    out: str | Path,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    test_loader: Iterable[Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    config: Mapping[str, Any] | None = None,
    label: str = "fit",
) -> dict[str, Any]:
    """Train ``model`` for ``epochs`` epochs, checkpointing each one into the run folder ``out``.

    ``optimizer``: default SGD(lr 0.1, momentum 0.9); ``loss_fn``: default cross-entropy.
    ``config``: your settings (plain types); a resumed run must use the same ones.  Returns
    ``{"history", "final_loss", "test_accuracy", "seconds", "model_file", ...}`` (accuracy as a
    fraction; ``seconds`` as in :mod:`torchpint.run.report`).  Raises
    :class:`~torchpint.errors.ConfigError` (bad folder, other settings on resume) or
    :class:`~torchpint.run.loop.NonFiniteLossError` (NaN/Inf loss; the last checkpoint is kept).
    """
    from torchpint.errors import ConfigError

    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    settings = {"model_class": type(model).__name__, "optimizer": type(optimizer).__name__, **(config or {})}
    folder = open_run_folder(out, resume=resume, overwrite=overwrite, record={"command": "fit", "config": settings})
    with folder:
        trainer = _ModelTrainer(model, train_loader, test_loader, optimizer, loss_fn or F.cross_entropy, device)
        begin = time.perf_counter()
        loop = train_epochs(trainer, epochs=epochs, checkpoints=Checkpoints(folder.checkpoints), config=settings,
                            label=label, resume=folder.resume, progress=progress)
        model_file = folder.path / "model.pt"
        save_atomic(model.state_dict(), model_file)
        last = loop.history[-1] if loop.history else {}
        results = {
            "world_size": 1, "seconds": time.perf_counter() - begin, "epochs": epochs,
            "final_loss": last.get("train_loss"), "test_accuracy": last.get("test_accuracy"),
            "test_loss": last.get("test_loss"), "model_file": str(model_file), "config": settings,
            "history": loop.history, "resumed_from_epoch": loop.start_epoch,
        }  # fmt: skip
        write_training_outputs(folder.path, results, {label: loop.history}, title=type(model).__name__)
    return results
