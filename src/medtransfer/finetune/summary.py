"""A row per layer group: parameter count, whether it trains, lr and weight decay."""

from __future__ import annotations

from torch.optim import Optimizer


def layer_group_rows(
    model, optimizer: Optimizer | None = None, lr: float | None = None, weight_decay: float = 0.0
) -> list[dict]:
    """From the optimizer's param groups when given, else from the strategy's multipliers of `lr`."""
    by_name = {g["name"]: g for g in optimizer.param_groups} if optimizer is not None else {}
    mult = model.strategy.lr_multipliers()
    rows = []
    for name, modules in model.groups.items():
        params = [p for m in modules for p in m.parameters()]
        group = by_name.get(name)
        rows.append(
            {
                "group": name,
                "params": sum(p.numel() for p in params),
                "trainable": "yes" if name in model.trainable_groups else "no",
                "lr": group["lr"] if group else (lr * mult[name] if lr is not None else None),
                "weight_decay": group["weight_decay"] if group else weight_decay,
            }
        )
    return rows
