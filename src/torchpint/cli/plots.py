"""Plots written by the CLI (matplotlib, no screen needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> None:
    """Write a matplotlib figure (creating the folder it goes in) and release it."""
    import matplotlib.pyplot as plt

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def plot_residuals(histories: Mapping[str, Sequence[float]], path: str, title: str = "") -> None:
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
    ax.set_xlabel("iteration")
    ax.set_ylabel("space-time residual (2-norm)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
