"""The report of a multi-label model on an evaluated split (what split_report.py gives single-label
models): per label its AUROC with a bootstrap interval, average precision, prevalence, and sensitivity and
specificity at its threshold (per_label_report.md / .csv); the macro AUROC (over the labels with both
classes in the split) with its interval, the micro AUROC, ECE over all (image, label) pairs, and the ROC
curve of every label in one figure (roc_curves.png).

Metric keys (split = test, val …): <split>/ece, <split>/ece_calibrated (with fitted temperatures),
<split>/auroc_ci_low/high (the macro AUROC's interval), <split>/auroc/<label>, <split>/ap/<label>; the
macro <split>/auroc, <split>/auroc_micro and <split>/ap are the split's metrics (multilabel.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import binary_roc

from medtransfer.evaluation.multilabel import (
    bootstrap_label_intervals,
    calibration_error,
    known,
    macro,
    micro_auroc,
    per_label_auroc,
    per_label_average_precision,
    thresholds_of,
)
from medtransfer.evaluation.operating_point import rates_at_threshold
from medtransfer.evaluation.per_class_report import to_markdown, write_csv
from medtransfer.evaluation.plots import roc_curves_figure


def multilabel_decision_text(model) -> str:
    op = model.operating_point
    if not op:
        return "each label at probability ≥ 0.5 (no threshold fitted)"
    how = f"{op.get('rule')} on the validation split"
    if op.get("target_sensitivity"):
        how += f", target sensitivity {op['target_sensitivity']}"
    return f"each label at probability ≥ its own threshold ({how}; per_label_report.md lists them)"


def per_label_rows(model, probs: torch.Tensor, targets: torch.Tensor, intervals) -> list[dict]:
    """One row per label: known images, positives, prevalence, AUROC (NaN without both classes) with its
    95% interval, average precision, threshold, sensitivity and specificity at it."""
    aurocs = per_label_auroc(probs, targets)
    aps = per_label_average_precision(probs, targets)
    thresholds = thresholds_of(model.operating_point, model.class_names)
    rows = []
    for k, name in enumerate(model.class_names):
        keep = known(targets[:, k])
        y = targets[keep, k].long()
        sensitivity, specificity = rates_at_threshold(probs[keep, k], y, float(thresholds[k]))
        low, high = intervals[k] or (float("nan"), float("nan"))
        rows.append(
            {
                "label": name,
                "known": int(keep.sum()),
                "positives": int(y.sum()),
                "prevalence": float(y.float().mean()) if len(y) else float("nan"),
                "auroc": float(aurocs[k]),
                "auroc_ci_low": low,
                "auroc_ci_high": high,
                "ap": float(aps[k]),
                "threshold": float(thresholds[k]),
                "sensitivity": sensitivity,
                "specificity": specificity,
            }
        )
    return rows


def multilabel_report(
    model, logits: torch.Tensor, targets: torch.Tensor, split: str, samples: int, seed: int
) -> tuple[dict[str, float], dict, list[dict], list[str]]:
    """(metrics, {file stem: figure}, per-label rows, notes) of a multi-label model on raw logits (N, L)
    and targets (N, L)."""
    targets = targets.float()
    probs = model.probabilities_of(logits)
    label_intervals, macro_interval = bootstrap_label_intervals(probs, targets, samples, seed)
    rows = per_label_rows(model, probs, targets, label_intervals)
    metrics = {f"{split}/ece": calibration_error(logits.sigmoid(), targets)}
    if model.calibration:
        metrics[f"{split}/ece_calibrated"] = calibration_error(probs, targets)
    if macro_interval:
        metrics[f"{split}/auroc_ci_low"], metrics[f"{split}/auroc_ci_high"] = macro_interval
    for row in rows:
        metrics[f"{split}/auroc/{row['label']}"] = row["auroc"]
        metrics[f"{split}/ap/{row['label']}"] = row["ap"]
    curves = {}
    for k, row in enumerate(rows):
        if not np.isfinite(row["auroc"]):
            continue
        keep = known(targets[:, k])
        fpr, tpr, _ = binary_roc(probs[keep, k], targets[keep, k].long())
        point = (1 - row["specificity"], row["sensitivity"]) if model.operating_point else None
        curves[row["label"]] = (fpr.numpy(), tpr.numpy(), row["auroc"], point)
    defined = [r for r in rows if np.isfinite(r["auroc"])]
    macro_auroc = macro([r["auroc"] for r in rows])
    figures = {}
    if curves:
        figures["roc_curves"] = roc_curves_figure(
            curves, title=f"{split} ROC per label (macro AUROC {macro_auroc:.3f})"
        )
    ci = f" (95% CI {macro_interval[0]:.3f}–{macro_interval[1]:.3f})" if macro_interval else ""
    notes = [
        f"{len(targets)} {split} images, {len(rows)} labels; unknown values are left out of each label's numbers.",
        f"Macro AUROC {macro_auroc:.4f}{ci} over the {len(defined)} labels with positives and negatives; "
        f"micro AUROC {micro_auroc(probs, targets):.4f}; macro average precision "
        f"{macro([r['ap'] for r in rows]):.4f}.",
        f"Predicted: {multilabel_decision_text(model)}.",
        f"Intervals: bootstrap 95% over {samples} image resamples." if samples else "No bootstrap intervals.",
    ]
    if model.calibration:
        notes.append("Probabilities with one temperature per label (fitted on the validation split).")
    return metrics, figures, rows, notes


def write_per_label_report(rows: list[dict], notes: list[str], split: str, output_dir: Path) -> None:
    write_csv(rows, output_dir / "per_label_report.csv")
    (output_dir / "per_label_report.md").write_text(to_markdown(rows, f"Per-label report ({split})", notes))
