"""Bootstrap confidence intervals of AUROC and accuracy: the evaluated images resampled with replacement,
the metric computed on each resample, the interval read from the percentiles (2.5 % and 97.5 % for 95 %).
Resamples that lack a class give no AUROC and are left out of its interval.

A resample is a count per image; AUROC of a resample is computed from those counts for all resamples at
once (the Mann-Whitney statistic with ties counted half), the same value torchmetrics gives for the
resampled images, thousands of times faster than a loop."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc, multiclass_auroc

CHUNK = 100  # resamples computed together (memory: CHUNK × images floats, a few times)


def auroc(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """AUROC as medtransfer reports it: of class 1 for two classes, macro one-vs-rest for more."""
    num_classes = probs.shape[1]
    if num_classes == 2:
        return float(binary_auroc(probs[:, 1], targets, validate_args=False))
    return float(multiclass_auroc(probs, targets, num_classes, average="macro", validate_args=False))


def weighted_binary_auroc(scores: torch.Tensor, positive: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """AUROC of each row of `counts` (R, N): image i taken counts[r, i] times. NaN for a row without
    positives or without negatives."""
    unique, inverse = torch.unique(scores, return_inverse=True)  # ascending
    counts = counts.double()
    pos = torch.zeros(len(counts), len(unique), dtype=torch.float64)
    neg = torch.zeros_like(pos)
    pos.index_add_(1, inverse, counts * positive)
    neg.index_add_(1, inverse, counts * ~positive)
    neg_below = neg.cumsum(dim=1) - neg  # negatives scored strictly lower
    wins = (pos * (neg_below + 0.5 * neg)).sum(dim=1)
    pairs = pos.sum(dim=1) * neg.sum(dim=1)
    return torch.where(pairs > 0, wins / pairs.clamp(min=1), torch.nan)


def resampled_auroc(probs: torch.Tensor, targets: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """`auroc` of each resample (row of counts); for several classes the macro mean over the classes
    present in `targets` (as the reported AUROC: metrics.MacroOverPresentClasses); NaN where a resample
    lacks one of them."""
    num_classes = probs.shape[1]
    if num_classes == 2:
        return weighted_binary_auroc(probs[:, 1].double(), targets == 1, counts)
    per_class = [
        weighted_binary_auroc(probs[:, k].double(), targets == k, counts)
        for k in range(num_classes)
        if (targets == k).any()
    ]
    return torch.stack(per_class).mean(dim=0)  # NaN when a present class is missing from a resample


def resample_counts(n: int, samples: int, seed: int) -> Iterator[torch.Tensor]:
    """`samples` resamples of n images with replacement (seeded), CHUNK at a time: (resamples, n) float64,
    how often each image was drawn."""
    rng = np.random.default_rng(seed)
    for start in range(0, samples, CHUNK):
        draws = torch.from_numpy(rng.integers(0, n, size=(min(CHUNK, samples - start), n)))
        yield torch.zeros(len(draws), n, dtype=torch.float64).scatter_add_(
            1, draws, torch.ones(draws.shape, dtype=torch.float64)
        )


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """The central `level` percentile interval of the finite values (None when there is none)."""
    values = values[np.isfinite(values)]
    tail = 100 * (1 - level) / 2
    return tuple(float(v) for v in np.percentile(values, [tail, 100 - tail])) if len(values) else None


def bootstrap_intervals(
    probs: torch.Tensor,
    targets: torch.Tensor,
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """{"auroc": (low, high), "acc": (low, high)} over `samples` resamples (seeded). Accuracy is that of
    the class with the highest probability, like `acc`. Empty for samples=0."""
    if samples <= 0:
        return {}
    probs, targets = probs.float().cpu(), targets.long().cpu()
    n = len(targets)
    correct = (probs.argmax(dim=1) == targets).double()
    accuracies, aurocs = [], []
    for counts in resample_counts(n, samples, seed):
        accuracies.append((counts @ correct) / n)
        aurocs.append(resampled_auroc(probs, targets, counts))
    intervals = {"acc": percentile_interval(torch.cat(accuracies).numpy(), level)}
    auroc_interval = percentile_interval(torch.cat(aurocs).numpy(), level)
    if auroc_interval:
        intervals["auroc"] = auroc_interval
    return intervals
