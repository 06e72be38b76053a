"""Matplotlib figures that go both into TensorBoard and into the run directory as PNG."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

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
            ax.text(
                j,
                i,
                f"{matrix[i, j]}\n{fractions[i, j]:.0%}",
                ha="center",
                va="center",
                color=color,
                fontsize=9,
            )
    fig.tight_layout()
    return fig


def _finish_curve(fig, ax, threshold_point, xlabel: str, ylabel: str, title: str, legend: str):
    """The operating point (x, y, threshold), labels and unit axes shared by the ROC and PR figures."""
    if threshold_point is not None:
        x, y, t = threshold_point
        ax.plot([x], [y], "o", color="crimson", label=f"threshold {t:.3g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_title(title)
    ax.legend(loc=legend)
    fig.tight_layout()
    return fig


def roc_figure(fpr, tpr, auroc: float, threshold_point=None, title: str = "ROC curve"):
    """The ROC curve; `threshold_point`: (fpr, tpr, threshold) of the chosen operating point."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, lw=2, label=f"AUROC {auroc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1)
    return _finish_curve(
        fig,
        ax,
        threshold_point,
        "1 − specificity (false positive rate)",
        "sensitivity (true positive rate)",
        title,
        "lower right",
    )


def pr_figure(
    precision, recall, prevalence: float, threshold_point=None, title: str = "Precision-recall curve"
):
    """The precision-recall curve of class 1; the dashed line is the precision of guessing (prevalence);
    `threshold_point`: (recall, precision, threshold) of the chosen operating point."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(recall, precision, lw=2)
    ax.axhline(prevalence, ls="--", color="gray", lw=1, label=f"prevalence {prevalence:.2f}")
    return _finish_curve(fig, ax, threshold_point, "recall (sensitivity)", "precision", title, "lower left")


def reliability_figure(curves: dict[str, dict], title: str = "Reliability diagram"):
    """Accuracy against mean confidence per confidence bin, one line per entry of `curves` (label →
    `calibration.reliability_bins` output plus "ece"), with the share of images per bin below."""
    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(4.5, 5.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1, label="perfect calibration")
    for label, bins in curves.items():
        keep = ~np.isnan(np.asarray(bins["accuracy"]))
        conf, acc = np.asarray(bins["confidence"])[keep], np.asarray(bins["accuracy"])[keep]
        line = ax.plot(conf, acc, "o-", label=f"{label} (ECE {bins['ece']:.3f})")[0]
        edges = np.asarray(bins["edges"])
        counts = np.asarray(bins["counts"])
        hist.stairs(counts / max(counts.sum(), 1), edges, color=line.get_color(), alpha=0.8)
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    hist.set_xlabel("confidence (highest class probability)")
    hist.set_ylabel("share")
    fig.tight_layout()
    return fig


def overlay_grid_figure(
    rows: list[list[dict]], row_labels: Sequence[str], title: str, row_prefix: str = "true: "
):
    """A grid of images (rows × columns); each cell a dict with "image" (H, W, 3 uint8), "caption" and
    "correct" (green or red caption); each row labelled `row_prefix` + its row label."""
    n_cols = max((len(r) for r in rows), default=1)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2.2 * n_cols + 0.6, 2.4 * len(rows)), squeeze=False)
    for r, cells in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(cells):
                cell = cells[c]
                ax.imshow(cell["image"])
                ax.set_title(cell["caption"], fontsize=8, color="green" if cell["correct"] else "crimson")
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(f"{row_prefix}{row_labels[r]}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def roc_curves_figure(curves: dict[str, tuple], title: str = "ROC curves"):
    """Several ROC curves in one figure (multi-label: one per label); `curves`: label → (fpr, tpr, auroc,
    operating point (fpr, tpr) or None). The legend gives each AUROC; dots mark the thresholds."""
    fig, ax = plt.subplots(figsize=(6.5, 6))
    colors = plt.get_cmap("tab20" if len(curves) > 10 else "tab10")
    for k, (label, (fpr, tpr, auroc, point)) in enumerate(curves.items()):
        color = colors(k % colors.N)
        ax.plot(fpr, tpr, lw=1.5, color=color, label=f"{label} {auroc:.3f}")
        if point is not None:
            ax.plot([point[0]], [point[1]], "o", color=color, ms=4)
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1)
    ax.set_xlabel("1 − specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7, title="AUROC", title_fontsize=8)
    fig.tight_layout()
    return fig


def save_figure(
    fig, path: str | Path | None, loggers: Iterable = (), tag: str = "", step: int = 0, dpi: int = 120
):
    """Render `fig` once at `dpi` and write that image to `path` (PNG) and to every TensorBoard logger
    under `tag` (savefig then add_figure would draw it twice); the figure is closed."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    if path is not None:
        Image.fromarray(rgb).save(path, optimize=False)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, rgb, global_step=step, dataformats="HWC")
    plt.close(fig)
