"""Train and eval transforms (torchvision.transforms.v2). Each step runs on the dtype it is fastest on
(benchmarks/dataloader.py): cropping, resizing and flipping on uint8 (torchvision's uint8 resize kernels;
and the crop leaves fewer pixels for what follows), rotation/translation and colour jitter on float (on
uint8 they convert internally, and cost more)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torchvision.transforms import v2


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Resize the whole image to size × size (no crop: the whole field of view is kept): the train
    transform without augmentation."""
    return train_transform(size, mean, std, augment=None)


AUGMENTATIONS = ("scale", "hflip", "rotation", "translate", "brightness", "contrast")


def augments(augment: Mapping | None) -> bool:
    """Whether `augment` turns on any random augmentation (otherwise the train transform is the eval one)."""
    return any((augment or {}).get(key) for key in AUGMENTATIONS)


def train_transform(
    size: int, mean: Sequence[float], std: Sequence[float], augment: Mapping | None = None
) -> v2.Compose:
    """augment keys (all optional): scale [lo, hi] of a RandomResizedCrop, hflip probability,
    rotation degrees, translate fraction, brightness, contrast. None or {} trains without augmentation."""
    augment = dict(augment or {})
    steps: list = []
    scale = augment.get("scale")
    if scale:
        steps.append(v2.RandomResizedCrop((size, size), scale=tuple(scale), ratio=(0.9, 1.1), antialias=True))
    else:
        steps.append(v2.Resize((size, size), antialias=True))
    if augment.get("hflip"):
        steps.append(v2.RandomHorizontalFlip(float(augment["hflip"])))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if augment.get("rotation") or augment.get("translate"):
        translate = augment.get("translate")
        steps.append(
            v2.RandomAffine(
                degrees=float(augment.get("rotation") or 0),
                translate=(translate, translate) if translate else None,
            )
        )
    if augment.get("brightness") or augment.get("contrast"):
        steps.append(
            v2.ColorJitter(brightness=augment.get("brightness") or 0, contrast=augment.get("contrast") or 0)
        )
    steps.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(steps)
