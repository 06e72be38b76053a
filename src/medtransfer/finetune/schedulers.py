"""Learning-rate schedules over per-group learning rates. Each factory takes the optimizer (its groups'
lrs already scaled: finetune/param_groups.py) and the run's optimizer steps, and returns Lightning's
lr-scheduler dict. Each scales every group by the same factor at every step, so the ratios between layer
groups hold (tests/test_schedulers.py checks each one step by step)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, MultiStepLR, OneCycleLR, ReduceLROnPlateau

# the learning rates appear in the loggers (LearningRateMonitor) as lr/<param group name>
NAME = "lr"


def _per_step(scheduler) -> dict:
    return {"scheduler": scheduler, "interval": "step", "name": NAME}


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.05, min_lr_ratio: float = 0.0
) -> dict:
    """Linear warmup over `warmup_fraction` of the steps, then cosine decay to `min_lr_ratio` × lr
    (Loshchilov & Hutter, SGDR, ICLR 2017; warmup: Goyal et al., 2017)."""
    warmup = max(1, round(warmup_fraction * total_steps)) if warmup_fraction > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return _per_step(LambdaLR(optimizer, factor))


def constant(optimizer: Optimizer, total_steps: int) -> dict:
    """No schedule: every group keeps its lr."""
    return _per_step(LambdaLR(optimizer, lambda step: 1.0))


def one_cycle(
    optimizer: Optimizer,
    total_steps: int,
    pct_start: float = 0.25,
    div_factor: float = 25.0,
    final_div_factor: float = 1e5,
    cycle_momentum: bool = True,
) -> dict:
    """fastai's default one-cycle policy (Smith, 2018): each group rises from lr / div_factor to its own
    lr over `pct_start` of the steps, then anneals (cosine) to lr / (div_factor × final_div_factor). Each
    group's peak is its own lr (torch's OneCycleLR with one max_lr would flatten the groups)."""
    peaks = [group["lr"] for group in optimizer.param_groups]
    scheduler = OneCycleLR(
        optimizer,
        max_lr=peaks,
        total_steps=max(2, total_steps),
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        cycle_momentum=cycle_momentum,
    )
    return _per_step(scheduler)


def multistep(
    optimizer: Optimizer, total_steps: int, milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1
) -> dict:
    """lr × gamma at each milestone, given as fractions of the run (MedMNIST v2's protocol: ×0.1 at 50 %
    and 75 % of the epochs; Yang et al., Scientific Data 2023). One milestone is a step schedule."""
    steps = sorted(max(1, round(float(m) * total_steps)) for m in milestones)
    return _per_step(MultiStepLR(optimizer, milestones=steps, gamma=gamma))


def reduce_on_plateau(
    optimizer: Optimizer,
    total_steps: int,
    monitor: str = "val/loss",
    mode: str = "min",
    factor: float = 0.1,
    patience: int = 3,
) -> dict:
    """lr × factor when `monitor` has not improved for `patience` validations. eps=0: a small group's lr
    is reduced like the others (torch skips reductions smaller than eps, which would break the ratios)."""
    scheduler = ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience, eps=0.0)
    return {"scheduler": scheduler, "interval": "epoch", "monitor": monitor, "name": NAME}
