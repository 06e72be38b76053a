"""Learning-rate schedules. Each is a LambdaLR: it scales every param group's own lr by the same factor,
so the ratios between layer groups hold at every step, warmup and decay included."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.05, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup over `warmup_fraction` of the steps, then cosine decay to `min_lr_ratio` × lr."""
    warmup = max(1, round(warmup_fraction * total_steps)) if warmup_fraction > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def constant(optimizer: Optimizer, total_steps: int) -> LambdaLR:
    """No schedule: every group keeps its lr."""
    return LambdaLR(optimizer, lambda step: 1.0)
