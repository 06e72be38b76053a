"""After training: the best checkpoint's predictions on the validation split fit the temperature
(calibrate=true) and, for binary tasks, the decision threshold (threshold_rule); for multi-label tasks one
temperature and one threshold per label (evaluation/multilabel.py). Both are set on the model
and stored in best.ckpt before it is tested, so the test metrics, medtransfer-eval and medtransfer-predict
all use them.

The validation predictions are those the best epoch's own validation computed, or (when they cannot be
known to be the checkpoint's) a plain loop of the best checkpoint over the val loader
(models/checkpoint.py `best_validation_outputs`; no Trainer.validate: that would log val metrics again
and move `<monitor>_best`). Order: the temperature first, then the threshold on the calibrated
probabilities, which are what the deployed model thresholds."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

from medtransfer.evaluation.calibration import (
    TEMPERATURE_BOUNDS,
    expected_calibration_error,
    fit_temperature,
    scaled_probabilities,
)
from medtransfer.evaluation.multilabel import fit_on_validation_multilabel
from medtransfer.evaluation.operating_point import check_threshold_rule, choose_threshold, rates_at_threshold
from medtransfer.evaluation.split_report import write_decision_settings
from medtransfer.models.checkpoint import add_to_checkpoint, best_validation_outputs

log = logging.getLogger(__name__)


def fit_on_validation(
    logits, targets, calibrate: bool, rule: str | None, target_sensitivity: float | None
) -> tuple[dict | None, dict | None]:
    """(calibration, operating_point) fitted on validation logits (before any temperature) and targets."""
    calibration = None
    probs = scaled_probabilities(logits)  # replaced by the calibrated ones when a temperature is fitted
    if calibrate:
        temperature = fit_temperature(logits, targets)
        if bool((logits.argmax(1) == targets).all()):
            log.warning(
                "calibrate: the best checkpoint makes no mistake on the validation split, so temperature "
                "scaling can only sharpen it (T = %.3g); a larger validation split gives a temperature to trust.",
                temperature,
            )
        elif not TEMPERATURE_BOUNDS[0] < temperature < TEMPERATURE_BOUNDS[1]:
            log.warning("calibrate: the temperature stopped at its bound (%.3g).", temperature)
        calibration = {
            "temperature": temperature,
            "val_ece_before": expected_calibration_error(probs, targets),
        }
        probs = scaled_probabilities(logits, temperature)
        calibration["val_ece_after"] = expected_calibration_error(probs, targets)
    operating_point = None
    if rule and logits.shape[1] == 2:
        scores = probs[:, 1]
        threshold = choose_threshold(scores, targets, rule, target_sensitivity)
        if threshold is None:
            log.warning("threshold: the validation split holds one class; none chosen.")
        else:
            sensitivity, specificity = rates_at_threshold(scores, targets, threshold)
            operating_point = {
                "rule": rule,
                "target_sensitivity": float(target_sensitivity) if rule == "sensitivity" else None,
                "threshold": threshold,
                "val_sensitivity": sensitivity,
                "val_specificity": specificity,
            }
    return calibration, operating_point


def fitted_metrics(calibration: dict | None, operating_point: dict | None) -> dict[str, float]:
    """What was fitted, as metric keys: val/temperature, val/ece_before, val/ece_after, threshold (the
    rule is in operating_point.json)."""
    metrics = {  # a multi-label model's per-label temperatures are in calibration.json only
        f"val/{k.removeprefix('val_')}": v
        for k, v in (calibration or {}).items()
        if isinstance(v, int | float)
    }
    if operating_point and operating_point.get("threshold") is not None:
        metrics["threshold"] = operating_point["threshold"]
    return metrics


class FitOnValidation(L.Callback):
    """calibrate: fit a temperature. threshold_rule: youden | sensitivity | None (binary and multi-label
    tasks).
    target_sensitivity: for threshold_rule=sensitivity. output_dir: where calibration.json and
    operating_point.json go (what best.ckpt applies, with how it was chosen); the fitted numbers are also
    logged as scalars (val/temperature, threshold …)."""

    def __init__(
        self,
        calibrate: bool = False,
        threshold_rule: str | None = "youden",
        target_sensitivity: float = 0.95,
        output_dir: str | None = None,
    ):
        check_threshold_rule(threshold_rule, target_sensitivity)  # before training, not after it
        self.output_dir = Path(output_dir) if output_dir else None
        self.calibrate = calibrate
        self.threshold_rule = threshold_rule
        self.target_sensitivity = target_sensitivity

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """At the end of training, before the fit's teardown writes a best.ckpt still held in memory
        (utils/checkpoint_io.py): the fitted values go into it then, without rewriting the file."""
        thresholded = pl_module.task.name in ("binary", "multilabel")
        if trainer.datamodule is None or not (self.calibrate or (self.threshold_rule and thresholded)):
            return
        if trainer.fast_dev_run:  # a smoke test of one batch: no pass over the whole validation split
            return
        fitted = None
        if trainer.is_global_zero:  # every rank would compute the same; one does, the others receive it
            logits, targets = best_validation_outputs(trainer, pl_module)
            if pl_module.task.multilabel:
                fitted = fit_on_validation_multilabel(
                    logits,
                    targets,
                    pl_module.class_names,
                    self.calibrate,
                    self.threshold_rule,
                    self.target_sensitivity,
                )
                if fitted[1] and fitted[1]["not_fitted"]:
                    log.warning(
                        "threshold: %s hold(s) one class on the validation split; left at 0.5.",
                        ", ".join(fitted[1]["not_fitted"]),
                    )
            else:
                fitted = fit_on_validation(
                    logits, targets, self.calibrate, self.threshold_rule, self.target_sensitivity
                )
            best_path = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None
            if best_path:  # best.ckpt carries them to the test, eval and predict
                add_to_checkpoint(
                    best_path,
                    trainer.strategy.checkpoint_io,  # still held in memory: no rewrite of the file
                    calibration=fitted[0],
                    operating_point=fitted[1],
                )
        calibration, operating_point = trainer.strategy.broadcast(fitted, src=0)
        pl_module.calibration, pl_module.operating_point = calibration, operating_point
        if trainer.is_global_zero:
            self.write(trainer, calibration, operating_point)
        trainer.strategy.barrier("fit_on_validation")  # best.ckpt is rewritten before any rank reads it

    def write(self, trainer: L.Trainer, calibration: dict | None, operating_point: dict | None) -> None:
        """The fitted numbers as scalars, and calibration.json / operating_point.json."""
        for logger in trainer.loggers:
            logger.log_metrics(fitted_metrics(calibration, operating_point), step=trainer.global_step)
        if self.output_dir is not None:
            write_decision_settings(trainer.lightning_module, self.output_dir)
