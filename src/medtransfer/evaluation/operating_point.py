"""The operating point of a binary classifier: the threshold on the positive class's probability (class 1)
above which an image is called positive, chosen on the validation split by a rule.

Rules: `youden` maximises Youden's J = sensitivity + specificity − 1; `sensitivity` takes the highest
threshold whose validation sensitivity reaches `target_sensitivity` (so the best specificity among those).
An image is positive when its probability ≥ threshold. The threshold lies halfway between the validation
score the rule picks and the next lower one (the same decisions on the validation split, with a margin)."""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import binary_roc

from medtransfer.utils.errors import ConfigError

THRESHOLD_RULES = ("youden", "sensitivity")


def check_threshold_rule(rule: str | None, target_sensitivity: float | None) -> None:
    """Raise ConfigError for an unknown rule, or a target sensitivity outside (0, 1) under rule=sensitivity."""
    if rule is None:
        return
    if rule not in THRESHOLD_RULES:
        raise ConfigError(
            f"threshold_rule={rule!r}: use youden, sensitivity (with target_sensitivity) "
            "or null (the class with the highest probability)."
        )
    if rule == "sensitivity" and (target_sensitivity is None or not 0 < float(target_sensitivity) < 1):
        raise ConfigError(
            f"target_sensitivity={target_sensitivity!r}: give a fraction between 0 and 1 "
            "(exclusive), e.g. 0.95."
        )


def choose_threshold(
    scores: torch.Tensor, targets: torch.Tensor, rule: str, target_sensitivity: float | None = None
) -> float | None:
    """The threshold on `scores` (probabilities of class 1) chosen by `rule`; None when the targets hold
    one class only (no ROC curve to choose from)."""
    check_threshold_rule(rule, target_sensitivity)
    targets = targets.long().cpu()
    if targets.min() == targets.max():
        return None
    fpr, tpr, thresholds = binary_roc(scores.float().cpu(), targets)
    # thresholds descend; torchmetrics puts a first point (threshold 1, nothing positive) in front
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    if rule == "youden":
        index = int(torch.argmax(tpr - fpr))  # the first maximum: the highest threshold among ties
    else:
        index = int(torch.nonzero(tpr >= float(target_sensitivity))[0])
    # every threshold in (next lower score, chosen score] classifies the validation images alike: take the
    # middle of that gap, not its edge, so that a test image just below the lowest chosen score still counts
    if index + 1 < len(thresholds):
        return float((thresholds[index] + thresholds[index + 1]) / 2)
    return float(thresholds[index] / 2)


def rates_at_threshold(scores: torch.Tensor, targets: torch.Tensor, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) when class 1 is predicted for score ≥ threshold (NaN without positives,
    or without negatives)."""
    predicted = scores.float().cpu() >= threshold
    positive = targets.long().cpu() == 1
    sensitivity = float(predicted[positive].float().mean()) if positive.any() else float("nan")
    specificity = float((~predicted[~positive]).float().mean()) if (~positive).any() else float("nan")
    return sensitivity, specificity
