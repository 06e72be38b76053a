"""One pass of a module over a loader, without training: what fitting on validation (logits) and linear
probing on cached features (backbone features) both need."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader


@torch.no_grad()  # not inference_mode: the results may be used with autograd (temperature fitting)
def outputs(
    module: nn.Module,
    loader: DataLoader,
    device: torch.device | str,
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs, labels) of every (x, y) batch of `loader`, the module in eval mode (its mode is restored
    after), as float32 on the CPU."""
    device = torch.device(device)
    was_training = module.training
    module.eval()
    results, labels = [], []
    try:
        for x, y in loader:
            with forward_context():
                out = module(x.to(device, non_blocking=True))
            results.append(out.float().cpu())
            labels.append(y.cpu())
    finally:
        module.train(was_training)
    return torch.cat(results), torch.cat(labels)
