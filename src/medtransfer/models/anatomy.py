"""The layer groups of a ResNet classifier, from the input to the output."""

from __future__ import annotations

from torch import nn

LAYER_GROUPS = ("stem", "layer1", "layer2", "layer3", "layer4", "head")


def layer_groups(backbone: nn.Module, head: nn.Module) -> dict[str, list[nn.Module]]:
    """`stem` (conv1, bn1), `layer1` … `layer4`, `head`: every parameter belongs to exactly one group."""
    groups = {
        "stem": [backbone.conv1, backbone.bn1],
        **{f"layer{i}": [getattr(backbone, f"layer{i}")] for i in range(1, 5)},
        "head": [head],
    }
    owned = {id(p) for mods in groups.values() for m in mods for p in m.parameters()}
    stray = [n for n, p in backbone.named_parameters() if id(p) not in owned]
    if stray:
        raise ValueError(f"backbone parameters outside the layer groups: {stray[:5]}")
    return groups


def group_parameters(modules: list[nn.Module]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed): biases and normalization parameters get no weight decay (as timm, fastai)."""
    decay, no_decay = [], []
    for module in modules:
        for sub in module.modules():
            for name, p in sub.named_parameters(recurse=False):
                is_norm = isinstance(sub, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm)
                (no_decay if is_norm or name == "bias" or p.ndim <= 1 else decay).append(p)
    return decay, no_decay
