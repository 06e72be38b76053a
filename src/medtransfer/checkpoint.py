"""Loading a medtransfer checkpoint back into a model, with its data config and preprocessing."""

from __future__ import annotations

from pathlib import Path

import torch

from medtransfer.errors import ConfigError
from medtransfer.models.classifier import Classifier


def load_classifier(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> Classifier:
    """The trained classifier (eval mode). Pretrained weights are not fetched again: the checkpoint has them."""
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={path}: no such file. Give a checkpoint such as <run dir>/checkpoints/best.ckpt."
        )
    model = Classifier.load_from_checkpoint(path, map_location=map_location, weights_only=True, weights=None)
    return model.eval()
