"""The anatomy a model declares (as timm's `group_matcher`): its layer groups from the input to the head,
and the layer Grad-CAM explains. One function per backbone family; finetune/ and evaluation/ ask the model
and never name a layer."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Anatomy:
    """groups: name → modules, ordered from the input (the stem, first) to the head (last); every
    parameter belongs to exactly one group. explanation_layer: the last spatial block (Grad-CAM target)."""

    groups: dict[str, list[nn.Module]]
    explanation_layer: nn.Module


def resnet_anatomy(backbone: nn.Module, head: nn.Module) -> Anatomy:
    """torchvision ResNets: `stem` (conv1, bn1), `layer1` … `layer4`, `head`; Grad-CAM on layer4's last
    block (He et al., CVPR 2016)."""
    groups = {
        "stem": [backbone.conv1, backbone.bn1],
        **{f"layer{i}": [getattr(backbone, f"layer{i}")] for i in range(1, 5)},
        "head": [head],
    }
    owned = {id(p) for mods in groups.values() for m in mods for p in m.parameters()}
    stray = [n for n, p in backbone.named_parameters() if id(p) not in owned]
    if stray:
        raise ValueError(f"backbone parameters outside the layer groups: {stray[:5]}")
    return Anatomy(groups, explanation_layer=backbone.layer4[-1])


# backbone family → its anatomy (every supported backbone is a ResNet: models/backbone.py RESNETS)
ANATOMIES = {"resnet": resnet_anatomy}
LAYER_GROUPS = ("stem", "layer1", "layer2", "layer3", "layer4", "head")
