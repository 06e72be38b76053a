"""How a pretrained backbone is adapted: layer groups, per-group learning rates, freezing strategies."""

from medtransfer.finetune.layer_groups import LAYER_GROUPS, layer_groups
from medtransfer.finetune.strategies import FastAI, FreezingStrategy, Full, Gradual, LinearProbe, Partial

__all__ = [
    "LAYER_GROUPS",
    "FastAI",
    "FreezingStrategy",
    "Full",
    "Gradual",
    "LinearProbe",
    "Partial",
    "layer_groups",
]
