"""The report of a model on an evaluated split (the test split after training; any split in
medtransfer-eval), from its logits and targets: the confusion matrix, calibration (ECE, reliability
diagram), the operating point (ROC and precision-recall curves, sensitivity and specificity at the
threshold), bootstrap intervals of AUROC and accuracy, and the per-class table. Figures go to the run dir
as PNG (confusion_matrix_<split>.png …) and to TensorBoard; numbers come back for metrics.json.

Metric keys (split = test, val …): <split>/ece (the model without temperature), <split>/ece_calibrated
(with the fitted temperature, when there is one), threshold, <split>/sensitivity_at_threshold,
<split>/specificity_at_threshold (binary, with a threshold), <split>/auroc_ci_low/high, <split>/acc_ci_low/high.
Multi-label models get their own report (multilabel_report.py): per_label_report.md/.csv, roc_curves.png."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from lightning.pytorch.loggers import Logger
from torchmetrics.functional.classification import (
    binary_precision_recall_curve,
    binary_roc,
    multiclass_confusion_matrix,
)

from medtransfer.evaluation.calibration import (
    expected_calibration_error,
    reliability_bins,
    scaled_probabilities,
)
from medtransfer.evaluation.confidence_intervals import auroc, bootstrap_intervals
from medtransfer.evaluation.multilabel_report import (
    multilabel_decision_text,
    multilabel_report,
    write_per_label_report,
)
from medtransfer.evaluation.operating_point import rates_at_threshold
from medtransfer.evaluation.per_class_report import per_class_rows, to_markdown, write_csv
from medtransfer.evaluation.plots import (
    confusion_matrix_figure,
    pr_figure,
    reliability_figure,
    roc_figure,
    save_figure,
)
from medtransfer.utils.atomic_write import atomic_write_json, atomic_write_text


def decision_text(model) -> str:
    """How the model turns probabilities into a class (labels), in words."""
    if model.task.multilabel:
        return multilabel_decision_text(model)
    threshold = model.threshold
    if threshold is None:
        return "the class with the highest probability"
    op = model.operating_point or {}
    how = f"{op.get('rule')} on the validation split"
    if op.get("target_sensitivity"):
        how += f", target sensitivity {op['target_sensitivity']}"
    return f"{model.class_names[1]} when its probability ≥ {threshold:.4g} ({how})"


def report_metrics(model, probs, targets, logits, split: str, samples: int, seed: int) -> dict[str, float]:
    metrics = {f"{split}/ece": expected_calibration_error(scaled_probabilities(logits), targets)}
    if model.calibration:
        metrics[f"{split}/ece_calibrated"] = expected_calibration_error(probs, targets)
    threshold = model.threshold
    if threshold is not None:
        sensitivity, specificity = rates_at_threshold(probs[:, 1], targets, threshold)
        metrics["threshold"] = float(threshold)
        # NaN without positives (negatives): left out, as undefined_metrics reports for sensitivity (specificity)
        if sensitivity == sensitivity:
            metrics[f"{split}/sensitivity_at_threshold"] = sensitivity
        if specificity == specificity:
            metrics[f"{split}/specificity_at_threshold"] = specificity
    for name, (low, high) in bootstrap_intervals(probs, targets, samples, seed).items():
        metrics[f"{split}/{name}_ci_low"] = low
        metrics[f"{split}/{name}_ci_high"] = high
    return metrics


def figures(model, probs, targets, logits, split: str, metrics: dict[str, float]) -> dict[str, plt.Figure]:
    """{file stem: figure}: confusion_matrix_<split>, reliability_diagram, and for binary tasks roc_curve
    and pr_curve. `metrics`: what report_metrics computed (the ECEs and the rates at the threshold are not
    computed again)."""
    names = model.class_names
    matrix = multiclass_confusion_matrix(model.decide(probs), targets, len(names)).numpy()
    out = {
        f"confusion_matrix_{split}": confusion_matrix_figure(matrix, names, title=f"{split} confusion matrix")
    }
    curves = {}
    curves["uncalibrated" if model.calibration else "model"] = {
        **reliability_bins(scaled_probabilities(logits), targets),
        "ece": metrics[f"{split}/ece"],
    }
    if model.calibration:
        curves[f"temperature {model.temperature:.3g}"] = {
            **reliability_bins(probs, targets),
            "ece": metrics[f"{split}/ece_calibrated"],
        }
    out["reliability_diagram"] = reliability_figure(curves, title=f"{split} reliability diagram")
    if probs.shape[1] != 2 or targets.min() == targets.max():
        return out
    scores, threshold = probs[:, 1], model.threshold
    fpr, tpr, _ = binary_roc(scores, targets)
    precision, recall, _ = binary_precision_recall_curve(scores, targets)
    roc_point = pr_point = None
    if threshold is not None:
        sensitivity = metrics[f"{split}/sensitivity_at_threshold"]
        specificity = metrics[f"{split}/specificity_at_threshold"]
        predicted = scores >= threshold
        precision_at = float((targets[predicted] == 1).float().mean()) if predicted.any() else 1.0
        roc_point = (1 - specificity, sensitivity, threshold)
        pr_point = (sensitivity, precision_at, threshold)
    positive = model.class_names[1]
    out["roc_curve"] = roc_figure(
        fpr.numpy(), tpr.numpy(), auroc(probs, targets), roc_point, title=f"{split} ROC ({positive})"
    )
    out["pr_curve"] = pr_figure(
        precision.numpy(),
        recall.numpy(),
        float((targets == 1).float().mean()),
        pr_point,
        title=f"{split} precision-recall ({positive})",
    )
    return out


def write_per_class_report(model, probs, targets, split: str, output_dir: Path) -> None:
    rows = per_class_rows(model.decide(probs).numpy(), targets.numpy(), model.class_names)
    write_csv(rows, output_dir / "per_class_report.csv")
    notes = [
        f"{len(targets)} images (split={split}); rows: true class, `predicted …`: the confusion matrix.",
        f"Predicted class: {decision_text(model)}.",
    ]
    if any(value is None for row in rows for value in row.values()):
        notes.append(
            "n/a: undefined (precision of a class never predicted, recall of a class without images)."
        )
    absent = [row["class"] for row in rows if not row["support"]]
    if absent:
        notes.append(
            f"No images of {', '.join(absent)} (split={split}): averaged metrics are over the classes present."
        )
    if model.calibration:
        notes.append(
            f"Probabilities with temperature {model.temperature:.4g} (fitted on the validation split)."
        )
    atomic_write_text(
        output_dir / "per_class_report.md", to_markdown(rows, f"Per-class report ({split})", notes)
    )


def write_decision_settings(model, output_dir: Path) -> None:
    """calibration.json and operating_point.json: what the checkpoint applies, with how it was chosen."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, settings in (("calibration", model.calibration), ("operating_point", model.operating_point)):
        if settings:
            atomic_write_json(output_dir / f"{name}.json", settings)


def evaluation_report(
    model,
    logits: torch.Tensor,
    targets: torch.Tensor,
    split: str,
    output_dir: str | Path | None,
    loggers: Iterable[Logger] = (),
    step: int = 0,
    bootstrap_samples: int = 1000,
    bootstrap_seed: int = 0,
) -> dict[str, float]:
    """The report of `model` (its class names, temperature and threshold) on a split's raw logits
    (N, classes; before the temperature) and targets (N,), its keys and files named by `split`; files
    into `output_dir`, figures into the TensorBoard loggers. Call on rank zero."""
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
    if model.task.multilabel:
        logits, targets = logits.float().cpu(), targets.float().cpu()
        metrics, figs, rows, notes = multilabel_report(
            model, logits, targets, split, bootstrap_samples, bootstrap_seed
        )
        if output_dir is not None:
            write_per_label_report(rows, notes, split, output_dir)
    else:
        logits, targets = logits.float().cpu(), targets.long().cpu()
        probs = scaled_probabilities(logits, model.temperature)
        metrics = report_metrics(model, probs, targets, logits, split, bootstrap_samples, bootstrap_seed)
        figs = figures(model, probs, targets, logits, split, metrics)
        if output_dir is not None:
            write_per_class_report(model, probs, targets, split, output_dir)
    for name, fig in figs.items():
        path = output_dir / f"{name}.png" if output_dir is not None else None
        save_figure(fig, path, loggers, f"{split}/{name.removesuffix('_' + split)}", step)
    return metrics
