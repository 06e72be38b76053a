"""With data.folds: the best checkpoint's probabilities on its validation fold, val_predictions.csv in the
run dir. Every image outside the test split is in exactly one validation fold, so the CV report
(report.py) pools these files into the out-of-fold predictions (oof_predictions.csv) of the whole
cross-validation."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from medtransfer.evaluation.cross_validation import Predictions, write_predictions
from medtransfer.models.checkpoint import best_validation_outputs

PREDICTIONS_FILE = "val_predictions.csv"


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
        logits, targets = best_validation_outputs(trainer, pl_module)
        probs = pl_module.probabilities_of(logits).float().cpu()  # the temperature fit_on_validation set
        part = images.data.splits["val"]
        predictions = Predictions(
            list(part.paths),
            [str(images.fold)] * len(part),
            [images.label_text(label) for label in part.labels],
            targets.cpu(),
            probs.double(),
            list(pl_module.class_names),
        )
        write_predictions(self.output_dir / PREDICTIONS_FILE, predictions)
