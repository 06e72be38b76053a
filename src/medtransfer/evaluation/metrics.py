"""Classification metrics (torchmetrics) under the project's fixed keys: acc, balanced_acc, f1, auroc,
and sensitivity/specificity for binary tasks. All take class probabilities of shape (N, C)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

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

log = logging.getLogger(__name__)


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


class MacroOverPresentClasses(Metric):
    """The mean of a per-class metric (`average=None`) over the classes present in the targets.

    torchmetrics' macro average counts a class with no target as 0 (AUROC, recall), so 3 classes with one
    missing from a split could never score above 0.667. Here the missing class is left out of the mean and
    a warning names it (once per metric and set of missing classes). Returns a scalar tensor; NaN when no
    target was seen."""

    full_state_update = False

    def __init__(self, metric: Metric, num_classes: int, name: str, class_names: Sequence[str] | None = None):
        super().__init__()
        self.metric = metric
        self.num_classes = num_classes
        self.name = name
        self.class_names = list(class_names) if class_names else [f"class {i}" for i in range(num_classes)]
        self.add_state("support", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self._warned: set[tuple[int, ...]] = set()

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        self.metric.update(probs, target)
        self.support += torch.bincount(target.long().flatten(), minlength=self.num_classes)

    def compute(self) -> torch.Tensor:
        present = self.support > 0
        if not present.any():
            return torch.tensor(float("nan"))
        missing = tuple(torch.nonzero(~present).flatten().tolist())
        if missing and missing not in self._warned:
            self._warned.add(missing)
            log.warning(
                "%s: averaged over the %d classes present; no image of %s in this split.",
                self.name,
                int(present.sum()),
                ", ".join(repr(self.class_names[i]) for i in missing),
            )
        with warnings.catch_warnings():  # torchmetrics' warning about the absent classes, named above
            warnings.filterwarnings("ignore", message="No positive samples in targets")
            per_class = self.metric.compute()
        return per_class[present.to(per_class.device)].mean()

    def reset(self) -> None:
        super().reset()
        self.metric.reset()


def classification_metrics(
    num_classes: int, prefix: str = "", class_names: Sequence[str] | None = None
) -> MetricCollection:
    """acc, balanced_acc (mean recall over classes), f1 (macro), auroc (macro one-vs-rest for several
    classes), and for two classes sensitivity and specificity of class 1 (the positive class).

    The macro averages (balanced_acc, f1, several-class auroc) are over the classes present in the targets:
    a class without images in the split is left out and named in a logged warning. `class_names` (length
    `num_classes`) names them; without it they are "class <index>"."""

    def macro(metric: Metric, name: str) -> Metric:
        return MacroOverPresentClasses(metric, num_classes, f"{prefix}{name}", class_names)

    metrics: dict[str, Metric] = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "balanced_acc": macro(MulticlassRecall(num_classes, average=None), "balanced_acc"),
        "f1": macro(MulticlassF1Score(num_classes, average=None), "f1"),
    }
    if num_classes == 2:
        metrics["auroc"] = _PositiveClass(BinaryAUROC())
        metrics["sensitivity"] = _PositiveClass(BinaryRecall())
        metrics["specificity"] = _PositiveClass(BinarySpecificity())
    else:
        metrics["auroc"] = macro(MulticlassAUROC(num_classes, average=None), "auroc")
    return MetricCollection(metrics, prefix=prefix, compute_groups=False)


def undefined_metrics(targets: torch.Tensor, class_names: Sequence[str]) -> dict[str, str]:
    """{metric name: why it is undefined} for the metrics of `classification_metrics` that the classes
    present in `targets` (N,) leave without a value: AUROC with fewer than two classes present; for two
    classes, sensitivity without images of class 1 and specificity without images of class 0. An evaluated
    set may hold any subset of the trained classes; these must be left out, not reported as 0 or NaN."""
    present = sorted({int(t) for t in targets.tolist()})
    names = ", ".join(repr(class_names[k]) for k in present) or "none"
    why = {}
    if len(present) < 2:
        what = "both classes" if len(class_names) == 2 else "at least two classes"
        why["auroc"] = f"AUROC needs images of {what}; this split has only {names}"
    if len(class_names) == 2:
        if 1 not in present:
            why["sensitivity"] = f"sensitivity needs images of the positive class {class_names[1]!r}"
        if 0 not in present:
            why["specificity"] = f"specificity needs images of the negative class {class_names[0]!r}"
    return why
