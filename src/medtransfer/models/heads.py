"""Classification heads that replace a backbone's classifier; sized by the data, never hard-coded."""

from __future__ import annotations

from torch import nn

from medtransfer.utils.errors import ConfigError


class LinearHead(nn.Sequential):
    """Dropout (optional) then one linear layer."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        layers = [nn.Dropout(dropout)] if dropout > 0 else []
        super().__init__(*layers, nn.Linear(in_features, num_classes))


class MLPHead(nn.Sequential):
    """Linear → BatchNorm → ReLU → Dropout → Linear."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 512, dropout: float = 0.2):
        super().__init__(
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )


# conf/model/head/<name>.yaml → class: a checkpoint names its head, and only these can be built from it
HEADS = {"linear": LinearHead, "mlp": MLPHead}


def build_head(config: dict | None, in_features: int, num_classes: int) -> nn.Module:
    """The head named by config["name"] (default linear) with the other keys as arguments.
    Raises ConfigError for a name outside HEADS."""
    options = dict(config or {"name": "linear"})
    name = options.pop("name", "linear")
    if name not in HEADS:
        raise ConfigError(f"model.head.name={name!r}: use one of {', '.join(HEADS)}.")
    return HEADS[name](in_features, num_classes, **options)
