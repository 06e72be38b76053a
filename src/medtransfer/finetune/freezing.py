"""Applying a strategy's trainable set to a model's layer groups: which parameters get gradients, and
BatchNorm of frozen groups on its running statistics (finetune.bn=frozen) or training (bn=train, as
fastai's train_bn)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from torch import nn


def _norms(modules: Iterable[nn.Module]) -> Iterable[nn.Module]:
    return (s for m in modules for s in m.modules() if isinstance(s, nn.modules.batchnorm._BatchNorm))


def set_trainable(groups: Mapping[str, Sequence[nn.Module]], trainable: frozenset[str], bn: str) -> None:
    """Parameters of the groups in `trainable` get gradients, the others none (the optimizer skips them),
    except BatchNorm's affine parameters when bn='train'."""
    for name, modules in groups.items():
        for module in modules:
            module.requires_grad_(name in trainable)
        if name not in trainable and bn == "train":
            for norm in _norms(modules):
                norm.requires_grad_(True)


def freeze_norm_statistics(groups: Mapping[str, Sequence[nn.Module]], trainable: frozenset[str]) -> None:
    """BatchNorm of the frozen groups in eval mode: running statistics neither used from the batch nor
    updated. Call after every `module.train()` (bn='frozen')."""
    for name, modules in groups.items():
        if name not in trainable:
            for norm in _norms(modules):
                norm.eval()
