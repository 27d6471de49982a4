"""The one report: metrics JSON and CSV (atomic), training curves, summary lines, the ``--json`` line.

Conventions every command follows (documented here once):

* accuracy is a fraction in [0, 1] in every file and JSON; only human-readable lines show percent;
* ``seconds`` (top level of a command's JSON) is the wall-clock time of the command's work on
  rank 0: the solve, or every training epoch with its evaluation and checkpoint, from after the
  setup (arguments checked, data loaded, network built, processes started) to the end; an
  epoch record's ``seconds`` is that epoch's training time alone (``eval_seconds`` its evaluation);
* every JSON a command writes or prints carries ``version`` (the package version) and
  ``world_size`` (the processes the run used);
* ``--json`` prints exactly one JSON object, as the last line of standard output
  (:func:`print_json_line`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "epoch_line",
    "plot_history",
    "print_json_line",
    "stamp",
    "write_csv",
    "write_json",
    "write_text",
]


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically: a reader sees the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    """JSON has no NaN/Infinity: they become null (a strict reader would reject the file)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def stamp(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` with the package ``version`` (first key, unless it has one)."""
    from torchpint import __version__

    return {"version": __version__, **obj}


def write_json(path: str | Path, obj: Mapping[str, Any]) -> None:
    """Write ``obj`` (with ``version``) as indented JSON, atomically; non-JSON values as strings."""
    write_text(path, json.dumps(_plain(stamp(obj)), indent=1, default=str) + "\n")


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a CSV file atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def print_json_line(obj: Mapping[str, Any]) -> None:
    """Print ``obj`` (with ``version``) as one JSON line on stdout: the last line a command prints."""
    sys.stdout.flush()
    print(json.dumps(_plain(stamp(obj)), default=str), flush=True)


def epoch_line(label: str, record: Mapping[str, Any], epochs: int) -> str:
    """The per-epoch summary line (printed with or without progress bars)."""
    parts = [f"[{label}] epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}"]
    if record.get("train_accuracy") is not None:
        parts[0] += f", acc {100 * record['train_accuracy']:.2f}%"
    if record.get("test_loss") is not None and not _nan(record.get("test_loss")):
        test = f"test loss {record['test_loss']:.4f}"
        if record.get("test_accuracy") is not None and not _nan(record.get("test_accuracy")):
            test += f", acc {100 * record['test_accuracy']:.2f}%"
        parts.append(test)
    parts.append(f"{record['seconds']:.2f} s")
    return " | ".join(parts)


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def plot_history(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, title: str = "") -> None:
    """Loss (log scale) and, where recorded, accuracy (percent) per epoch; one line style per run.

    ``runs``: label -> epoch records with ``epoch``, ``train_loss`` and optionally ``test_loss``,
    ``train_accuracy``, ``test_accuracy`` (fractions).  Epoch axes show whole epochs.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from torchpint.cli.plots import save_figure

    with_acc = any(r.get("test_accuracy") is not None or r.get("train_accuracy") is not None
                   for history in runs.values() for r in history)
    fig, axes = plt.subplots(1, 2 if with_acc else 1, figsize=(10 if with_acc else 6, 4))
    ax_loss = axes[0] if with_acc else axes
    for label, history in runs.items():
        epochs = [r["epoch"] for r in history]
        line = ax_loss.plot(epochs, [r["train_loss"] for r in history], "--", label=f"{label} (train)")[0]
        if any(r.get("test_loss") is not None for r in history):
            ax_loss.plot(epochs, [r.get("test_loss") for r in history], "o-", color=line.get_color(), label=f"{label} (test)")
        if with_acc:
            for key, style in (("train_accuracy", "--"), ("test_accuracy", "o-")):
                values = [r.get(key) for r in history]
                if any(v is not None for v in values):
                    axes[1].plot(epochs, [None if v is None else 100 * v for v in values], style, color=line.get_color(),
                                 label=f"{label} ({key.split('_')[0]})")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    for ax in axes if with_acc else [axes]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if with_acc:
        axes[1].set_ylabel("accuracy (%)")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
