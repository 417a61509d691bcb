"""Plots: gradient flow through time and hidden activations. PNG files, written atomically.

What is here: the Agg backend and atomic PNG writing every plot of rnnkit goes through, and small
matplotlib functions that take numbers and a path. What is not: computing the
numbers (diagnostics.py), training curves (train.py) or attention maps (tasks/seq2seq.py).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rnnkit.data.text import atomic_write


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display is needed or touched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    """A laid-out figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    return buf.getvalue()


def save_figure(fig, path: str | Path) -> Path:
    """Write a figure as PNG, atomically; the figure is closed."""
    return atomic_write(Path(path), png_bytes(fig))


def plot_gradient_flow(curves: dict[str, tuple[Sequence[int], Sequence[float]]], path: str | Path,
                       title: str = "How far back the gradient reaches") -> Path:
    """One line per model: gradient norm (log scale) against the distance back from the last step."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, (distance, norms) in curves.items():
        pairs = sorted(zip(distance, norms, strict=True))
        ax.plot([d for d, _ in pairs], [max(n, 1e-30) for _, n in pairs], label=name, lw=1.5)
    ax.set_yscale("log")
    ax.set_xlabel("steps back from the last step (t_last - t)")
    ax.set_ylabel("||dL / dh_t||")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return save_figure(fig, path)


def plot_activations(acts, labels: Sequence[str], path: str | Path, title: str = "hidden state",
                     max_units: int = 64) -> Path:
    """Heatmap of hidden units (rows) over time steps (columns), inputs as x tick labels."""
    plt = pyplot()
    values = acts[:, :max_units].T.detach().cpu().numpy() if hasattr(acts, "detach") else acts
    T = values.shape[1]
    fig, ax = plt.subplots(figsize=(min(16, max(6, 2 + T * 0.13)), 4.5), dpi=110)
    im = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    step = max(1, T // 60)
    ax.set_xticks(range(0, T, step))
    ax.set_xticklabels([repr(labels[i])[1:-1] or " " for i in range(0, T, step)], fontsize=6, rotation=90)
    ax.set_ylabel(f"unit (first {values.shape[0]})")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.03)
    return save_figure(fig, path)


def plot_activation_panels(panels: dict[str, Any], labels: Sequence[str], path: str | Path,
                           max_units: int = 48) -> Path:
    """Heatmaps of several models' hidden units (rows) over the same steps (columns), one panel each."""
    plt = pyplot()
    T = len(labels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(min(16, max(6, 2 + T * 0.13)), 0.9 + 3.2 * len(panels)),
                             dpi=110, sharex=True, squeeze=False)
    step = max(1, T // 100)
    im = None
    for ax, (name, acts) in zip(axes[:, 0], panels.items(), strict=True):
        values = acts[:, :max_units].T.detach().cpu().numpy() if hasattr(acts, "detach") else acts[:, :max_units].T
        im = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_ylabel(f"unit (first {values.shape[0]})")
        ax.set_title(name, fontsize=10)
    ax = axes[-1, 0]
    ax.set_xticks(range(0, T, step))
    ax.set_xticklabels([repr(labels[i])[1:-1] or " " for i in range(0, T, step)], fontsize=7)
    fig.colorbar(im, ax=list(axes[:, 0]), fraction=0.02, pad=0.01)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    pyplot().close(fig)
    return atomic_write(Path(path), buf.getvalue())
