"""With data.folds: the best checkpoint's probabilities on its validation fold, val_predictions.csv in the
run dir. Every image outside the test split is in exactly one validation fold, so the CV report
(report.py) pools these files into the out-of-fold predictions (oof_predictions.csv) of the whole
cross-validation."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import torch

from medtransfer.models.checkpoint import best_model
from medtransfer.utils.atomic_write import atomic_open

PREDICTIONS_FILE = "val_predictions.csv"


def prediction_columns(class_names: list[str], multilabel: bool) -> list[str]:
    """The header of val_predictions.csv / oof_predictions.csv: path, fold, label (as text), target
    (the class index; multi-label: target_<label>, 1 / 0 / empty for unknown), prob_<class> (as the model
    is deployed: temperature applied)."""
    targets = [f"target_{c}" for c in class_names] if multilabel else ["target"]
    return ["path", "fold", "label", *targets, *[f"prob_{c}" for c in class_names]]


def write_predictions(
    path: Path,
    paths: list[str],
    fold: int | str,
    label_texts: list[str],
    targets: torch.Tensor,
    probs: torch.Tensor,
    class_names: list[str],
) -> None:
    """One row per image: targets (N,) int or (N, L) float with NaN unknown; probs (N, C)."""
    multilabel = targets.ndim == 2
    with atomic_open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f)
        writer.writerow(prediction_columns(class_names, multilabel))
        for name, text, target, p in zip(paths, label_texts, targets.tolist(), probs.tolist(), strict=True):
            target = ["" if math.isnan(t) else int(t) for t in target] if multilabel else [int(target)]
            writer.writerow([name, fold, text, *target, *[f"{v:.8f}" for v in p]])


class ValidationPredictions(L.Callback):
    """At the end of fit (after fit_on_validation, so the temperature is applied), when the data module
    has folds: val_predictions.csv in output_dir."""

    def __init__(self, output_dir: str | None = None):
        self.output_dir = Path(output_dir) if output_dir else None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        images = getattr(dm, "images", dm)  # the image data module behind a feature cache
        if self.output_dir is None or not getattr(images, "folds", None) or trainer.fast_dev_run:
            return
        if not trainer.is_global_zero:
            return
        with best_model(trainer, pl_module) as model:
            logits, targets = model.collect_logits(dm.dataloader("val"))
            probs = model.probabilities_of(logits).float().cpu()
        part = images.data.splits["val"]
        write_predictions(
            self.output_dir / PREDICTIONS_FILE,
            part.paths,
            images.fold,
            [images.label_text(label) for label in part.labels],
            targets.cpu(),
            probs,
            list(model.class_names),
        )
