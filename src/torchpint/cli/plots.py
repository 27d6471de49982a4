"""Plots written by the CLI (matplotlib, no screen needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def plot_file(requested: str | Path, default_name: str) -> Path:
    """The file a ``--plot`` argument names, as an absolute path (what the command prints).

    An existing folder, or a path ending in a separator, gets ``default_name`` inside it (saving
    to the folder itself fails); a name without a suffix gets ``.png``, the format matplotlib
    would write (it appends the suffix itself, so printing the bare name would name no file).
    """
    text = str(requested)
    path = Path(text).expanduser()
    if path.is_dir() or text.endswith(("/", "\\")):
        path = path / default_name
    elif not path.suffix:
        path = path.with_suffix(".png")
    return path.resolve()


def integer_ticks(ax: Any) -> None:
    """Whole numbers only on the x axis (epochs, iterations): no "epoch 1.5"."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # one epoch: a tick at 1, not 0.945..1.05


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> None:
    """Write a matplotlib figure (creating the folder it goes in) and release it."""
    import matplotlib.pyplot as plt

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def plot_residuals(histories: Mapping[str, Sequence[float]], path: str | Path, title: str = "") -> None:
    """Residual 2-norm against iteration, log scale, one line per history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    # Identical histories are the point of most of these plots: vary marker and dash so that
    # lines lying on top of each other stay visible.
    styles = [("o", "-", 7), ("s", "--", 5), ("^", ":", 4), ("x", "-.", 6)]
    for i, (label, residuals) in enumerate(histories.items()):
        marker, dash, size = styles[i % len(styles)]
        ax.semilogy(range(1, len(residuals) + 1), [max(r, 1e-300) for r in residuals],
                    marker=marker, linestyle=dash, markersize=size, label=label)
    integer_ticks(ax)
    ax.set_xlabel("iteration")
    ax.set_ylabel("space-time residual (2-norm)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
