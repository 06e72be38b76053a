"""Cross-validation results: the per-image probabilities of a fold's model on its validation fold (or of
any model on any images: predictions files), pooled over the folds into out-of-fold predictions, and the
pooled AUROC with a bootstrap interval; mean ± sd over folds.

Pooling out-of-fold predictions (every image scored by the model that did not train on it) and computing
one AUROC on them is the "pooling" estimate of Bradley, "The use of the area under the ROC curve in the
evaluation of machine learning algorithms", Pattern Recognition 1997; the mean ± sd over folds is the
"averaging" one. Both are reported: pooling mixes models whose scores may be calibrated differently,
averaging has few folds to estimate from (Forman and Scholz, SIGKDD Explorations 2010)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medtransfer.evaluation.confidence_intervals import auroc, bootstrap_intervals
from medtransfer.evaluation.multilabel import bootstrap_label_intervals, macro, per_label_auroc
from medtransfer.utils.atomic_write import atomic_open
from medtransfer.utils.errors import DataError


@dataclass
class Predictions:
    """Per-image predictions. targets: (N,) int64 class index, or multi-label (N, L) float32 with NaN for
    unknown; probs: (N, C) float64 as the model is deployed (temperature applied)."""

    paths: list[str]
    folds: list[str]
    labels: list[str]
    targets: torch.Tensor
    probs: torch.Tensor
    class_names: list[str]

    @property
    def multilabel(self) -> bool:
        return self.targets.ndim == 2


def prediction_columns(class_names: list[str], multilabel: bool) -> list[str]:
    """The header of val_predictions.csv / oof_predictions.csv: path, fold, label (as text), target
    (the class index; multi-label: target_<label>, 1 / 0 / empty for unknown), prob_<class>."""
    targets = [f"target_{c}" for c in class_names] if multilabel else ["target"]
    return ["path", "fold", "label", *targets, *[f"prob_{c}" for c in class_names]]


def write_predictions(path: str | Path, p: Predictions) -> None:
    """One row per image, in the order of `p`; probabilities with 8 decimals."""
    with atomic_open(Path(path), "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f)
        writer.writerow(prediction_columns(p.class_names, p.multilabel))
        rows = zip(p.paths, p.folds, p.labels, p.targets.tolist(), p.probs.tolist(), strict=True)
        for name, fold, text, target, probs in rows:
            target = ["" if math.isnan(t) else int(t) for t in target] if p.multilabel else [int(target)]
            writer.writerow([name, fold, text, *target, *[f"{v:.8f}" for v in probs]])


def read_predictions(path: str | Path) -> Predictions:
    """A file written by `write_predictions`. DataError for another file."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        rows = list(reader)
    class_names = [h.removeprefix("prob_") for h in header if h.startswith("prob_")]
    multilabel = "target" not in header
    if not class_names or header[:3] != ["path", "fold", "label"]:
        raise DataError(
            f"{path}: not a predictions file (its header is {header}); it is written by training with data.folds."
        )
    if multilabel:
        cells = [[float(r[f"target_{c}"] or "nan") for c in class_names] for r in rows]  # empty: unknown
        targets = torch.tensor(cells, dtype=torch.float32).reshape(len(rows), len(class_names))
    else:
        targets = torch.tensor([int(r["target"]) for r in rows], dtype=torch.int64)
    probs = torch.tensor(
        [[float(r[f"prob_{c}"]) for c in class_names] for r in rows], dtype=torch.float64
    ).reshape(len(rows), len(class_names))
    return Predictions(
        [r["path"] for r in rows],
        [r["fold"] for r in rows],
        [r["label"] for r in rows],
        targets,
        probs,
        class_names,
    )


def pool(parts: list[tuple[str, Predictions]]) -> Predictions:
    """The predictions of several folds as one set, in the order given. `parts`: (where it came from, its
    predictions). DataError when the class names differ or an image appears twice (then the folds
    overlap and the pooled metrics would count it twice)."""
    if not parts:
        raise DataError("No fold predictions to pool.")
    names = parts[0][1].class_names
    seen: dict[str, str] = {}
    for source, p in parts:
        if p.class_names != names:
            raise DataError(
                f"{source}: classes {p.class_names}, other folds have {names}; pool one model's folds only."
            )
        for path in p.paths:
            if path in seen:
                raise DataError(
                    f"{path} is in the validation predictions of both {seen[path]} and {source}: the folds "
                    "overlap, so out-of-fold metrics would count it twice. Were these jobs run with one data "
                    "config and one seed? Run the cross-validation again into a new sweep dir."
                )
            seen[path] = source
    ps = [p for _, p in parts]
    return Predictions(
        [x for p in ps for x in p.paths],
        [x for p in ps for x in p.folds],
        [x for p in ps for x in p.labels],
        torch.cat([p.targets for p in ps]),
        torch.cat([p.probs for p in ps]),
        names,
    )


def pooled_auroc(p: Predictions) -> float:
    """AUROC of pooled predictions, as medtransfer reports it: class 1 for two classes, macro one-vs-rest
    for more, macro over the labels with both classes for multi-label."""
    if p.multilabel:
        return macro(per_label_auroc(p.probs, p.targets))
    if len(torch.unique(p.targets)) < p.probs.shape[1]:
        return float("nan")
    return auroc(p.probs.float(), p.targets)


def pooled_interval(p: Predictions, samples: int = 1000, seed: int = 0) -> tuple[float, float] | None:
    """Bootstrap 95 % percentile interval of `pooled_auroc` (images resampled; seeded), None for samples=0
    or when no resample holds every class."""
    if samples <= 0:
        return None
    if p.multilabel:
        return bootstrap_label_intervals(p.probs, p.targets, samples, seed)[1]
    return bootstrap_intervals(p.probs.float(), p.targets, samples, seed).get("auroc")


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for fewer than 2) of the finite values."""
    finite = np.array([v for v in values if isinstance(v, int | float) and math.isfinite(v)], dtype=float)
    if not len(finite):
        return float("nan"), float("nan")
    return float(finite.mean()), float(finite.std(ddof=1)) if len(finite) > 1 else float("nan")
