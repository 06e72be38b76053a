"""Multi-label outputs: one sigmoid per label (a chest X-ray can show an effusion and an atelectasis), each
label a binary problem of its own. Targets are (N, L) floats: 1 positive, 0 negative, NaN unknown (not
read from the data, or uncertain); an unknown value is left out of every loss and metric of its label.

- loss: binary cross-entropy on the logits, unknown entries masked (weight 0), optional pos_weight.
- AUROC and average precision per label on its known entries; the macro mean over the labels that have
  both classes in the split (the optimized `val/auroc`), and the micro AUROC over all known (image, label)
  pairs (as in the ChestX-ray14 and CheXpert papers: Wang et al., CVPR 2017; Irvin et al., AAAI 2019).
- per-label temperatures (Guo et al. 2017, one per sigmoid) and per-label thresholds (operating_point.py
  rules) fitted on validation; bootstrap intervals per label and for the macro mean."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_calibration_error,
)
from torchmetrics.utilities import dim_zero_cat

from medtransfer.evaluation.calibration import ECE_BINS, fit_log_temperature
from medtransfer.evaluation.confidence_intervals import (
    percentile_interval,
    resample_counts,
    weighted_binary_auroc,
)
from medtransfer.evaluation.operating_point import choose_threshold, rates_at_threshold

DEFAULT_THRESHOLD = 0.5  # a label whose threshold could not be fitted (one class on validation)


def known(targets: torch.Tensor) -> torch.Tensor:
    """(N, L) bool: where the target is known (not NaN)."""
    return ~torch.isnan(targets)


def masked_bce_with_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean binary cross-entropy over the known entries of (N, L) logits and targets (mask: (N, L) bool,
    default: the targets that are not NaN). A masked entry contributes exactly nothing, to the value and to
    the gradient, whatever its target. pos_weight (L,): weight of the positive term (neg/pos balances a
    rare label). label_smoothing ε moves the targets to ε/2 and 1 − ε/2."""
    mask = known(targets) if mask is None else mask.bool()
    filled = torch.where(mask, targets, torch.zeros_like(targets)).to(logits.dtype)
    if label_smoothing:
        filled = filled * (1 - label_smoothing) + label_smoothing / 2
    losses = F.binary_cross_entropy_with_logits(logits, filled, pos_weight=pos_weight, reduction="none")
    losses = torch.where(mask, losses, torch.zeros_like(losses))  # where, not ×: a NaN never leaks in
    return losses.sum() / mask.sum().clamp(min=1)


def _label_values(fn, probs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """fn(scores, targets) per label on its known entries; NaN for a label without both classes."""
    probs, targets = probs.float().cpu(), targets.float().cpu()
    values = np.full(probs.shape[1], np.nan)
    for k in range(probs.shape[1]):
        keep = known(targets[:, k])
        y = targets[keep, k].long()
        if len(y) and 0 < int(y.sum()) < len(y):
            values[k] = float(fn(probs[keep, k], y))
    return values


def per_label_auroc(probs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """AUROC of each label (L,) on its known entries; NaN where the split lacks positives or negatives."""
    return _label_values(lambda p, y: binary_auroc(p, y, validate_args=False), probs, targets)


def per_label_average_precision(probs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Average precision (area under the precision-recall curve) of each label (L,); NaN as for AUROC."""
    return _label_values(lambda p, y: binary_average_precision(p, y, validate_args=False), probs, targets)


def micro_auroc(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """AUROC over every known (image, label) pair pooled; NaN when they hold one class."""
    mask = known(targets.float().cpu())
    y = targets.float().cpu()[mask].long()
    if not len(y) or int(y.sum()) in (0, len(y)):
        return float("nan")
    return float(binary_auroc(probs.float().cpu()[mask], y, validate_args=False))


def macro(values: np.ndarray) -> float:
    """The mean over the labels where the value is defined (NaN when none is)."""
    values = np.asarray(values, dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def calibration_error(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """ECE of the label probabilities over every known (image, label) pair: Σ_bins |observed positive
    rate − mean probability| × (share of pairs)."""
    mask = known(targets.float().cpu())
    if not mask.any():
        return float("nan")
    return float(
        binary_calibration_error(
            probs.float().cpu()[mask], targets.float().cpu()[mask].long(), n_bins=n_bins, norm="l1"
        )
    )


def multilabel_values(probs: torch.Tensor, targets: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """The logged metrics: auroc (macro over the labels with both classes), auroc_micro, ap (macro)."""
    return {
        f"{prefix}auroc": macro(per_label_auroc(probs, targets)),
        f"{prefix}auroc_micro": micro_auroc(probs, targets),
        f"{prefix}ap": macro(per_label_average_precision(probs, targets)),
    }


class MultilabelMetrics(Metric):
    """Gathers (N, L) probabilities and targets over an epoch (and over DDP ranks); `compute` gives
    {prefix}auroc, {prefix}auroc_micro and {prefix}ap (`multilabel_values`)."""

    full_state_update = False

    def __init__(self, prefix: str = ""):
        super().__init__()
        self.prefix = prefix
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        self.probs.append(probs.detach().float())
        self.targets.append(targets.detach().float())

    def compute(self) -> dict[str, torch.Tensor]:
        values = multilabel_values(dim_zero_cat(self.probs), dim_zero_cat(self.targets), self.prefix)
        return {k: torch.tensor(v) for k, v in values.items()}


# ------------------------------------------------------------------ fitted on validation
def fit_temperatures(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> list[float]:
    """One temperature per label minimising the BCE of sigmoid(logits / T_k) on the label's known entries
    (`fit_log_temperature`); 1 for a label with no known entry."""
    logits = logits.detach().double().cpu()
    targets = targets.detach().double().cpu()
    mask = known(targets)
    counts = mask.sum(0).clamp(min=1)
    filled = torch.where(mask, targets, torch.zeros_like(targets))

    def loss(temperatures: torch.Tensor) -> torch.Tensor:
        losses = F.binary_cross_entropy_with_logits(logits / temperatures, filled, reduction="none")
        return (torch.where(mask, losses, torch.zeros_like(losses)).sum(0) / counts).sum()  # labels apart

    return fit_log_temperature(loss, logits.shape[1], max_iter).tolist()


def fit_thresholds(
    probs: torch.Tensor,
    targets: torch.Tensor,
    label_names: Sequence[str],
    rule: str,
    target_sensitivity: float | None = None,
) -> dict:
    """The operating point of every label, chosen by `rule` on its known validation entries:
    {"rule", "target_sensitivity", "thresholds": {label: t}, "val_sensitivity": {…}, "val_specificity":
    {…}, "not_fitted": [labels with one class on validation, left at DEFAULT_THRESHOLD]}."""
    thresholds, sensitivity, specificity, not_fitted = {}, {}, {}, []
    for k, name in enumerate(label_names):
        keep = known(targets[:, k])
        scores, y = probs[keep, k], targets[keep, k].long()
        threshold = choose_threshold(scores, y, rule, target_sensitivity) if len(y) else None
        if threshold is None:
            not_fitted.append(name)
            threshold = DEFAULT_THRESHOLD
        thresholds[name] = threshold
        sensitivity[name], specificity[name] = rates_at_threshold(scores, y, threshold)  # NaN without images
    return {
        "rule": rule,
        "target_sensitivity": float(target_sensitivity) if rule == "sensitivity" else None,
        "thresholds": thresholds,
        "val_sensitivity": sensitivity,
        "val_specificity": specificity,
        "not_fitted": not_fitted,
    }


def thresholds_of(operating_point: Mapping | None, label_names: Sequence[str]) -> torch.Tensor:
    """(L,) thresholds in label order from a stored operating point; DEFAULT_THRESHOLD for the others."""
    stored = (operating_point or {}).get("thresholds") or {}
    return torch.tensor([float(stored.get(n, DEFAULT_THRESHOLD)) for n in label_names])


# ------------------------------------------------------------------ confidence intervals
def bootstrap_label_intervals(
    probs: torch.Tensor, targets: torch.Tensor, samples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[list[tuple[float, float] | None], tuple[float, float] | None]:
    """Percentile intervals of each label's AUROC and of the macro AUROC over `samples` image resamples
    (seeded; the images are resampled, so a label's known entries go with their image). A label's
    interval uses the resamples where it has both classes (None if none has). The macro AUROC of a
    resample is the mean over the split's labels with both classes that also have both in the resample."""
    if samples <= 0:
        return [None] * probs.shape[1], None
    probs, targets = probs.double().cpu(), targets.double().cpu()
    n, num_labels = targets.shape
    mask = known(targets)
    defined = np.isfinite(per_label_auroc(probs, targets))
    per_label = [[] for _ in range(num_labels)]
    for counts in resample_counts(n, samples, seed):
        for k in range(num_labels):
            keep = mask[:, k]
            per_label[k].append(
                weighted_binary_auroc(probs[keep, k], targets[keep, k] == 1, counts[:, keep]).numpy()
            )
    values = np.stack([np.concatenate(v) for v in per_label], axis=1)  # (samples, L)
    label_intervals = [percentile_interval(values[:, k], level) for k in range(num_labels)]
    macro_interval = None
    if defined.any():
        chosen = values[:, defined]
        present = np.isfinite(chosen)
        # the mean over the labels defined in each resample (NaN for a resample where none is)
        means = np.where(present, chosen, 0.0).sum(1) / np.where(present.any(1), present.sum(1), np.nan)
        macro_interval = percentile_interval(means, level)
    return label_intervals, macro_interval


def fit_on_validation_multilabel(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_names: Sequence[str],
    calibrate: bool,
    rule: str | None,
    target_sensitivity: float | None,
) -> tuple[dict | None, dict | None]:
    """(calibration, operating_point) of a multi-label model, fitted on validation logits (N, L; before any
    temperature) and targets (N, L): per-label temperatures first (calibration["temperature"] is a list in
    label order), then per-label thresholds on the calibrated probabilities (`fit_thresholds`)."""
    calibration = None
    probs = logits.float().sigmoid()
    if calibrate:
        temperatures = fit_temperatures(logits, targets)
        calibration = {"temperature": temperatures, "val_ece_before": calibration_error(probs, targets)}
        probs = (logits.float() / torch.tensor(temperatures)).sigmoid()
        calibration["val_ece_after"] = calibration_error(probs, targets)
    operating_point = fit_thresholds(probs, targets, label_names, rule, target_sensitivity) if rule else None
    return calibration, operating_point
