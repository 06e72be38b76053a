"""Matplotlib figures that go both into TensorBoard and into the run directory as PNG."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def confusion_matrix_figure(matrix: np.ndarray, class_names: Sequence[str], title: str = "Confusion matrix"):
    """Counts per (true, predicted) class, with the row-normalised fraction under each count."""
    matrix = np.asarray(matrix)
    fractions = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.2 * n + 2))
    ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(n):
        for j in range(n):
            color = "white" if fractions[i, j] > 0.5 else "black"
            ax.text(j, i, f"{matrix[i, j]}\n{fractions[i, j]:.0%}", ha="center", va="center", color=color, fontsize=9)
    fig.tight_layout()
    return fig


def confusion_matrix(probs, targets, num_classes: int) -> np.ndarray:
    preds = np.asarray(probs).argmax(axis=1)
    return np.bincount(np.asarray(targets) * num_classes + preds, minlength=num_classes**2).reshape(num_classes, num_classes)
