"""Calibration: expected calibration error (torchmetrics), reliability bins, and temperature scaling
(Guo et al. 2017): one scalar T > 0 fitted on the validation split by minimising the negative log-likelihood
of softmax(logits / T). T > 1 softens an over-confident model; argmax and AUROC do not change."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

# equal-width confidence bins of ECE and the reliability diagram (torchmetrics' default)
ECE_BINS = 15
# the fitted temperature is kept in these bounds: a validation split the model classifies perfectly drives
# the NLL-optimal temperature towards 0 (ever more confident), which no test set supports
TEMPERATURE_BOUNDS = (0.01, 1000.0)


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE: Σ_bins |accuracy − mean confidence| × (share of samples), over `n_bins` bins of
    the highest class probability. probs (N, C), targets (N,)."""
    return float(
        multiclass_calibration_error(
            probs.float(), targets.long(), num_classes=probs.shape[1], n_bins=n_bins, norm="l1"
        )
    )


def reliability_bins(
    probs: torch.Tensor, targets: torch.Tensor, n_bins: int = ECE_BINS
) -> dict[str, torch.Tensor]:
    """Per equal-width bin of the top-label confidence: its edges, sample count, mean confidence and
    accuracy (NaN for empty bins) — what a reliability diagram draws."""
    confidence, predicted = probs.float().max(dim=1)
    correct = (predicted == targets).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    index = torch.bucketize(confidence, edges[1:-1], right=True)  # (lo, hi] like torchmetrics
    counts = torch.bincount(index, minlength=n_bins).float()
    conf_sum = torch.zeros(n_bins).index_add_(0, index, confidence)
    acc_sum = torch.zeros(n_bins).index_add_(0, index, correct)
    empty = counts == 0
    mean_conf = torch.where(empty, torch.nan, conf_sum / counts.clamp(min=1))
    accuracy = torch.where(empty, torch.nan, acc_sum / counts.clamp(min=1))
    return {"edges": edges, "counts": counts, "confidence": mean_conf, "accuracy": accuracy}


def scaled_probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return (logits.float() / temperature).softmax(dim=1)


def fit_log_temperature(
    loss: Callable[[torch.Tensor], torch.Tensor], shape, max_iter: int = 100
) -> torch.Tensor:
    """The temperatures T (float64, of `shape`: () for one, (L,) for one per label) minimising `loss(T)`,
    found with L-BFGS on log T (so T stays positive), within TEMPERATURE_BOUNDS."""
    log_t = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")
    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)

    def closure():
        optimizer.zero_grad()
        value = loss(log_t.clamp(lo, hi).exp())
        value.backward()
        return value

    optimizer.step(closure)
    return log_t.detach().clamp(lo, hi).exp()


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature minimising the NLL of softmax(logits / T) on (logits, targets)."""
    logits = logits.detach().double().cpu()
    targets = targets.detach().long().cpu()
    return float(fit_log_temperature(lambda t: F.cross_entropy(logits / t, targets), (), max_iter))
