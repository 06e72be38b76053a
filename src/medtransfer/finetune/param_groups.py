"""Optimizer param groups of a model's layer groups, each carrying its lr scale as data (`lr_scale`, as
timm's param groups do), applied once to the optimizer's base lr by `apply_lr_scales`. The torch
schedulers then scale every group's lr by the same factor, so the ratios between groups hold."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn
from torch.optim import Optimizer

NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def split_weight_decay(modules: Sequence[nn.Module]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed): biases and normalization parameters get no weight decay (timm's
    param_groups_weight_decay, fastai)."""
    decay, no_decay = [], []
    for module in modules:
        for sub in module.modules():
            for name, p in sub.named_parameters(recurse=False):
                (no_decay if isinstance(sub, NORMS) or name == "bias" or p.ndim <= 1 else decay).append(p)
    return decay, no_decay


def param_groups(groups: Mapping[str, Sequence[nn.Module]], lr_scales: Mapping[str, float]) -> list[dict]:
    """Two param groups per layer group, named `<group>` (weights, with the optimizer's weight decay) and
    `<group>/no_decay` (biases and norms, weight_decay 0), each with the `lr_scale` of its layer group."""
    out = []
    for name, modules in groups.items():
        decay, no_decay = split_weight_decay(modules)
        for params, suffix, options in ((decay, "", {}), (no_decay, "/no_decay", {"weight_decay": 0.0})):
            if params:
                out.append({"params": params, "name": name + suffix, "lr_scale": lr_scales[name], **options})
    return out


def apply_lr_scales(optimizer: Optimizer) -> Optimizer:
    """Each param group's lr = the optimizer's base lr (its `lr` argument) × the group's `lr_scale`: the
    one place a layer group's lr is set. Call once, before a scheduler is built."""
    for group in optimizer.param_groups:
        group["lr"] = optimizer.defaults["lr"] * group.get("lr_scale", 1.0)
    return optimizer
