"""Classification heads that replace a backbone's classifier; sized by the data, never hard-coded."""

from __future__ import annotations

from torch import nn


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
