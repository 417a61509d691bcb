"""Every plot of rnnkit, as PNG files written atomically; the one module that imports matplotlib.

What is here: the Agg backend and atomic PNG writing every plot goes through, and small matplotlib
functions that take numbers and a path: training curves, gradient flow through time, hidden activations,
the confusion matrix, attention maps, forecasts and their evaluation, flagged anomalies. What is not:
computing the numbers (diagnostics.py, metrics.py, the tasks) or reading anything.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rnnkit.io import atomic_write


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


# ------------------------------------------------------------------------------------------ training


def plot_curves(history: Sequence[dict[str, float]], records: Sequence[dict[str, Any]], monitor: str,
                path: str | Path) -> Path | None:
    """Training loss by step and the validation figure `monitor` by step; None (and no file) without data.

    Args:
        history: the training loss per log interval, dicts with "step" and "loss".
        records: the lines of metrics.jsonl; those with `valid_<monitor>` are drawn.
        monitor: the validation figure that picks the best weights (the y axis label).
        path: where the PNG goes.
    """
    if not records and not history:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if history:
        ax.plot([h["step"] for h in history], [h["loss"] for h in history], label="train loss", lw=1)
    valid_key = f"valid_{monitor}"
    valid = [r for r in records if valid_key in r]
    if valid:
        ax.plot([r["step"] for r in valid], [r[valid_key] for r in valid], "o-", label=f"valid {monitor}")
    ax.set_xlabel("step")
    ax.set_ylabel(monitor)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------- diagnostics


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


# ---------------------------------------------------------------------------------- classification


def plot_confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str = "") -> bytes:
    """The confusion matrix as a PNG image (rows: true class, columns: predicted), counts in the cells."""
    plt = pyplot()
    m = np.asarray(matrix)
    C = len(labels)
    size = min(max(3.5, 0.45 * C + 2), 14)
    fig, ax = plt.subplots(figsize=(size, size), dpi=110)
    rows = m.sum(axis=1, keepdims=True)
    shade = np.divide(m, rows, out=np.zeros(m.shape), where=rows > 0)  # colour by recall share of each row
    ax.imshow(shade, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(C), labels=[str(x) for x in labels], rotation=45 if C > 6 else 0,
                  ha="right" if C > 6 else "center")
    ax.set_yticks(range(C), labels=[str(x) for x in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if C <= 30:
        for i in range(C):
            for j in range(C):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if shade[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title)
    return png_bytes(fig)


def write_confusion_plot(path: str | Path, matrix: Sequence[Sequence[int]], labels: Sequence[str],
                         title: str = "") -> Path:
    """Write `plot_confusion` to `path` atomically."""
    return atomic_write(path, plot_confusion(matrix, labels, title))


# ------------------------------------------------------------------------------------------ seq2seq


def plot_attention(weights: Any, source_units: Sequence[str], target_units: Sequence[str], path: str | Path,
                   title: str | None = None) -> Path:
    """Heatmap of where each output token (rows) looked in the source (columns).

    Args:
        weights: (T, S) attention weights, a tensor or an array.
        source_units: the S source tokens as text (x tick labels).
        target_units: the output tokens as text; the first T label the rows.
    """
    plt = pyplot()
    w = weights.numpy() if hasattr(weights, "numpy") else np.asarray(weights)
    rows, cols = w.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * cols + 2), max(3.0, 0.4 * rows + 1.5)), dpi=110)
    ax.imshow(w, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(cols), source_units, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(rows), target_units[:rows], fontsize=8)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------- forecast

MAX_FORECASTS_PLOTTED = 20  # forecasts drawn by `evaluate --plot`
MAX_SERIES_PLOTTED = 4  # one panel per series, the first ones


def _series_panels(rows: int):
    plt = pyplot()
    fig, axes = plt.subplots(rows, 1, figsize=(9, 2.6 * rows + 0.6), dpi=110, squeeze=False)
    return fig, axes[:, 0]


def _save_series_figure(fig: Any, path: str | Path) -> Path:
    fig.autofmt_xdate()
    return save_figure(fig, path)


def plot_forecast(path: str | Path, times: Any, targets: np.ndarray, ahead: Any, found: dict[str, np.ndarray],
                  names: Sequence[str], history: int) -> Path:
    """The last `history` rows of each series, the forecast after them and its interval (when given).

    Args:
        times, targets: the series' timestamps (N,) and values (N, C).
        ahead: the H timestamps after the series.
        found: "point" (1, H, C) and, for probabilistic runs, "lower" and "upper" alike.
        names: the C series' names (panel titles).
        history: how many of the last rows to draw.
    """
    fig, axes = _series_panels(min(len(names), MAX_SERIES_PLOTTED))
    past = times[-history:]
    for c, ax in enumerate(axes):
        ax.plot(past, targets[-history:, c], color="0.3", lw=1, label="history")
        ax.plot(ahead, found["point"][0, :, c], color="C0", lw=1.5, label="forecast")
        if "lower" in found:
            ax.fill_between(ahead, found["lower"][0, :, c], found["upper"][0, :, c], color="C0", alpha=0.25,
                            label="interval")
        ax.set_title(names[c], fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save_series_figure(fig, path)


def plot_forecast_evaluation(path: str | Path, times: Any, targets: np.ndarray, origins: np.ndarray,
                             found: dict[str, np.ndarray], horizon: int, names: Sequence[str]) -> Path:
    """The truth and the forecasts from `origins`: those that do not overlap, at most MAX_FORECASTS_PLOTTED.

    Args:
        times, targets: the series' timestamps (N,) and values (N, C).
        origins: (B,) the rows each forecast starts at.
        found: "point" (B, H, C) and, for probabilistic runs, "lower" and "upper" alike.
        horizon: H.
        names: the C series' names (panel titles).
    """
    H = horizon
    fig, axes = _series_panels(min(len(names), MAX_SERIES_PLOTTED))
    # Forecasts that do not overlap (one per horizon), at most MAX_FORECASTS_PLOTTED, so each stays readable.
    picked = np.flatnonzero((origins - origins[0]) % H == 0)[:MAX_FORECASTS_PLOTTED]
    lo, hi = int(origins[picked[0]]), int(origins[picked[-1]]) + H
    for c, ax in enumerate(axes):
        ax.plot(times[lo:hi], targets[lo:hi, c], color="0.3", lw=1, label="truth")
        for n, i in enumerate(picked):
            span = times[origins[i]:origins[i] + H]
            ax.plot(span, found["point"][i, :, c], color="C1", lw=1.2, label="forecast" if n == 0 else None)
            if "lower" in found:
                ax.fill_between(span, found["lower"][i, :, c], found["upper"][i, :, c], color="C1", alpha=0.2,
                                label="interval" if n == 0 else None)
        ax.set_title(names[c], fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save_series_figure(fig, path)


def plot_anomalies(path: str | Path, times: Any, targets: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                   names: Sequence[str]) -> Path:
    """Each series with its flagged points (row `rows[k]` of series `cols[k]`) marked."""
    fig, axes = _series_panels(min(len(names), MAX_SERIES_PLOTTED))
    for c, ax in enumerate(axes):
        ax.plot(times, targets[:, c], color="0.3", lw=0.8)
        mine = rows[cols == c]
        ax.scatter(times[mine], targets[mine, c], color="C3", s=18, zorder=3, label="flagged")
        ax.set_title(names[c], fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save_series_figure(fig, path)


# ------------------------------------------------------------------------------------------- music


def plot_piano_roll(path: str | Path, roll: np.ndarray, frames_per_beat: int, lowest_pitch: int = 21,
                    prompt_frames: int = 0, title: str = "") -> Path:
    """A piano roll (T, K) of 0/1 as a picture: time in beats across, pitch up; the frames of a prompt
    (the first `prompt_frames`) in grey, the composed ones in colour.

    The pitch axis spans the keys that sound (with a little room), labelled at each C.
    """
    plt = pyplot()
    roll = np.asarray(roll)
    T, K = roll.shape
    sounding = np.flatnonzero(roll.any(axis=0))
    low, high = (int(sounding.min()), int(sounding.max())) if len(sounding) else (39, 51)
    low, high = max(low - 2, 0), min(high + 2, K - 1)
    picture = np.zeros((high - low + 1, max(T, 1)))  # (keys shown, T)
    picture[:, :prompt_frames] = 0.45 * roll[:prompt_frames, low:high + 1].T
    picture[:, prompt_frames:] = roll[prompt_frames:, low:high + 1].T
    fig, ax = plt.subplots(figsize=(min(max(T / (4 * frames_per_beat), 6), 16), 4), dpi=110)
    ax.imshow(picture, origin="lower", aspect="auto", cmap="Blues", vmin=0, vmax=1, interpolation="nearest",
              extent=(0, T / frames_per_beat, low + lowest_pitch - 0.5, high + lowest_pitch + 0.5))
    cs = [p for p in range(low + lowest_pitch, high + lowest_pitch + 1) if p % 12 == 0]
    ax.set_yticks(cs, [f"C{p // 12 - 1}" for p in cs])
    if prompt_frames:
        ax.axvline(prompt_frames / frames_per_beat, color="C3", lw=1)
    ax.set_xlabel("beat")
    ax.set_ylabel("pitch")
    ax.grid(axis="y", alpha=0.25)
    ax.set_title(title or f"{T} frames, {frames_per_beat} per beat", fontsize=9)
    return save_figure(fig, path)
