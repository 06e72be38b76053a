"""The layer-group table printed at the start of training, read from the built optimizer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn
from torch.optim import Optimizer


def layer_group_rows(
    groups: Mapping[str, Sequence[nn.Module]], optimizer: Optimizer, trainable: frozenset[str]
) -> list[dict]:
    """A row per layer group: parameter count, whether it trains now, and the lr and weight decay of its
    param group in `optimizer` (the weights' group, named as the layer group)."""
    by_name = {g["name"]: g for g in optimizer.param_groups}
    rows = []
    for name, modules in groups.items():
        group = by_name.get(name) or by_name.get(f"{name}/no_decay") or {}
        rows.append(
            {
                "group": name,
                "params": sum(p.numel() for m in modules for p in m.parameters()),
                "trainable": "yes" if name in trainable else "no",
                "lr": group.get("initial_lr", group.get("lr")),  # before any schedule
                "weight_decay": group.get("weight_decay"),
            }
        )
    return rows
