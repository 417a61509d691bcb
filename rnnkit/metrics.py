"""Task metrics computed from predictions, for the reports of `rnnkit evaluate`.

What is here, by task section. Classification: `confusion_matrix`, `classification_report` (accuracy,
macro F1, per-class precision/recall/F1/support and the confusion matrix) and `plot_confusion`. What
is not: the per-batch figures the trainer logs (each model's `metrics`) and anything that reads files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# --------------------------------------------------------------------------------- classification


def confusion_matrix(targets: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(targets, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def classification_report(targets: Sequence[int], predictions: Sequence[int], labels: Sequence[str]
                          ) -> dict[str, Any]:
    """Accuracy, macro F1, per-class figures and the confusion matrix.

    Precision, recall and F1 of a class with no predictions (or no examples) are 0, as scikit-learn's
    `zero_division=0` gives. Macro F1 averages over the classes seen in the targets or the predictions.

    Returns:
        {"accuracy", "macro_f1", "per_class": {label: {precision, recall, f1, support}},
         "confusion": {"labels": [...], "matrix": [[...]]}, "count"}; scores are fractions in [0, 1].
    """
    C = len(labels)
    matrix = confusion_matrix(targets, predictions, C)
    true_pos = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    precision = np.divide(true_pos, predicted, out=np.zeros(C), where=predicted > 0)
    recall = np.divide(true_pos, support, out=np.zeros(C), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(C), where=denom > 0)
    present = (support > 0) | (predicted > 0)
    total = int(matrix.sum())
    per_class = {
        label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                "support": int(support[i])}
        for i, label in enumerate(labels)
    }
    return {
        "accuracy": float(true_pos.sum() / max(total, 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "count": total,
        "per_class": per_class,
        "confusion": {"labels": list(labels), "matrix": matrix.tolist()},
    }


def plot_confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str = "") -> bytes:
    """The confusion matrix as a PNG image (rows: true class, columns: predicted), counts in the cells."""
    from rnnkit.viz import png_bytes, pyplot

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
    from rnnkit.data.text import atomic_write

    return atomic_write(path, plot_confusion(matrix, labels, title))
