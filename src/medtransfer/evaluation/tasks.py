"""The classification task, the one place where single-label and multi-label outputs differ: how logits
become probabilities, the loss, the metrics, and how probabilities become a decision.

- binary, multiclass: one class per image; softmax over the classes (targets (N,) class indices).
- multilabel: any number of labels per image; one sigmoid per label (targets (N, L) floats, 1 / 0 / NaN
  unknown; evaluation/multilabel.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from medtransfer.evaluation.metrics import classification_metrics
from medtransfer.evaluation.multilabel import MultilabelMetrics, masked_bce_with_logits, thresholds_of
from medtransfer.utils.errors import ConfigError

TASKS = ("binary", "multiclass", "multilabel")


def check_task(task: str | None, key: str = "data.task") -> None:
    if task not in (None, "auto", *TASKS):
        raise ConfigError(
            f"{key}={task!r}: use auto (inferred from the data), binary, multiclass or multilabel."
        )


class _Task:
    """What both kinds share: logits over the temperature (a number, or one per output), then the
    subclass's activation."""

    def scale(self, logits: torch.Tensor, temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
        if isinstance(temperature, torch.Tensor):
            temperature = temperature.to(logits.device)
        return logits.float() / temperature

    def probabilities(self, logits: torch.Tensor, temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
        return self.activation(self.scale(logits, temperature))


class SingleLabel(_Task):
    """binary | multiclass: softmax over the classes; the decision is the most probable class, or for
    binary tasks with a fitted threshold, class 1 at probability ≥ threshold."""

    multilabel = False

    def __init__(self, name: str):
        self.name = name

    def activation(self, scaled_logits: torch.Tensor) -> torch.Tensor:
        return scaled_logits.softmax(dim=1)

    def loss(self, logits, targets, weight=None, label_smoothing: float = 0.0, pos_weight=None):
        return F.cross_entropy(logits, targets, weight=weight, label_smoothing=label_smoothing)

    def metrics(self, num_outputs: int, prefix: str, names: Sequence[str] | None = None) -> Metric:
        return classification_metrics(num_outputs, prefix=prefix, class_names=names)

    def decide(
        self, probs: torch.Tensor, operating_point: Mapping | None, names: Sequence[str]
    ) -> torch.Tensor:
        """(N,) class indices."""
        threshold = (operating_point or {}).get("threshold") if probs.shape[1] == 2 else None
        if threshold is None:
            return probs.argmax(dim=1)
        return (probs[:, 1] >= threshold).long()


class MultiLabel(_Task):
    """multilabel: one sigmoid per label; a label is predicted at probability ≥ its threshold (fitted on
    validation per label, 0.5 until then). Unknown targets (NaN) are masked out of the loss."""

    multilabel = True
    name = "multilabel"

    def activation(self, scaled_logits: torch.Tensor) -> torch.Tensor:
        return scaled_logits.sigmoid()

    def loss(self, logits, targets, weight=None, label_smoothing: float = 0.0, pos_weight=None):
        return masked_bce_with_logits(logits, targets, pos_weight=pos_weight, label_smoothing=label_smoothing)

    def metrics(self, num_outputs: int, prefix: str, names: Sequence[str] | None = None) -> Metric:
        return MultilabelMetrics(prefix=prefix)

    def decide(
        self, probs: torch.Tensor, operating_point: Mapping | None, names: Sequence[str]
    ) -> torch.Tensor:
        """(N, L) 0/1: each label at probability ≥ its threshold."""
        return (probs >= thresholds_of(operating_point, names).to(probs.device)).long()


def task_for(name: str | None, num_outputs: int) -> SingleLabel | MultiLabel:
    """The task object of a model with `num_outputs` outputs; name None (a checkpoint from before tasks
    were stated): binary for 2 outputs, else multiclass."""
    check_task(name, "model.task")
    if name == "multilabel":
        return MultiLabel()
    if name in (None, "auto"):
        name = "binary" if num_outputs == 2 else "multiclass"
    if (name == "binary") != (num_outputs == 2):
        raise ConfigError(
            f"task {name} with {num_outputs} classes: binary means exactly 2 classes; set data.task=auto."
        )
    return SingleLabel(name)
