"""Loading a medtransfer checkpoint back into a model, with its data config, preprocessing, temperature and
threshold; adding what is fitted after training to a checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from medtransfer.models.classifier import Classifier
from medtransfer.utils.errors import ConfigError


def load_classifier(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> Classifier:
    """The trained classifier (eval mode). Pretrained weights are not fetched again: the checkpoint has them.
    The backbone is not compiled (model.compile is for training): evaluation, prediction and Grad-CAM run
    eagerly, with no warm-up and no compiler needed on the machine."""
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={path}: no such file. Give a checkpoint such as <run dir>/checkpoints/best.ckpt."
        )
    model = Classifier.load_from_checkpoint(
        path, map_location=map_location, weights_only=True, weights=None, compile=False
    )
    return model.eval()


def add_to_checkpoint(ckpt_path: str | Path, **entries) -> None:
    """Store `entries` in the checkpoint's medtransfer section, in place (written to a temporary file,
    then renamed, so a crash never leaves half a checkpoint). Values must be plain data (weights_only)."""
    path = Path(ckpt_path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint.setdefault("medtransfer", {}).update(entries)
    partial = path.with_name(path.name + ".partial")
    torch.save(checkpoint, partial)
    os.replace(partial, path)
