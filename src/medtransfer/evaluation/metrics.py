"""Classification metrics (torchmetrics) under the project's fixed keys: acc, balanced_acc, f1, auroc,
and sensitivity/specificity for binary tasks. All take class probabilities of shape (N, C)."""

from __future__ import annotations

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryRecall,
    BinarySpecificity,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassRecall,
)


class _PositiveClass(Metric):
    """Wraps a binary metric so that it takes (N, 2) probabilities: it reads column 1."""

    full_state_update = False

    def __init__(self, metric: Metric):
        super().__init__()
        self.metric = metric

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        self.metric.update(probs[:, 1], target)

    def compute(self) -> torch.Tensor:
        return self.metric.compute()

    def reset(self) -> None:
        super().reset()
        self.metric.reset()


def classification_metrics(num_classes: int, prefix: str = "") -> MetricCollection:
    """acc, balanced_acc (mean recall over classes), f1 (macro), auroc (macro one-vs-rest for several
    classes), and for two classes sensitivity and specificity of class 1 (the positive class)."""
    metrics: dict[str, Metric] = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "balanced_acc": MulticlassRecall(num_classes, average="macro"),
        "f1": MulticlassF1Score(num_classes, average="macro"),
    }
    if num_classes == 2:
        metrics["auroc"] = _PositiveClass(BinaryAUROC())
        metrics["sensitivity"] = _PositiveClass(BinaryRecall())
        metrics["specificity"] = _PositiveClass(BinarySpecificity())
    else:
        metrics["auroc"] = MulticlassAUROC(num_classes, average="macro")
    return MetricCollection(metrics, prefix=prefix, compute_groups=False)
