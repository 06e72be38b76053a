"""Loading a medtransfer checkpoint back into a model, with its data config, preprocessing, temperature and
threshold; adding what is fitted after training to a checkpoint."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from medtransfer.models.classifier import Classifier
from medtransfer.utils.atomic_write import atomic_write_bytes
from medtransfer.utils.checkpoint_io import load_checkpoint_file, safe_checkpoint_loading


def load_classifier(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> Classifier:
    """The trained classifier (eval mode). Pretrained weights are not fetched again: the checkpoint has them.
    The backbone is not compiled (model.compile is for training): evaluation, prediction and Grad-CAM run
    eagerly, with no warm-up and no compiler needed on the machine."""
    # missing, damaged or pickled payloads: a ConfigError; weights_only whatever the environment says
    with safe_checkpoint_loading(ckpt_path, key="ckpt_path") as path:
        model = Classifier.load_from_checkpoint(
            path, map_location=map_location, weights_only=True, weights=None, compile=False
        )
    return model.eval()


def add_to_checkpoint(ckpt_path: str | Path, **entries) -> None:
    """Store `entries` in the checkpoint's medtransfer section, in place (written to a temporary file,
    fsynced, then renamed, so a crash or a full disk never leaves half a checkpoint). Values must be plain data (weights_only)."""
    path = Path(ckpt_path)
    checkpoint = load_checkpoint_file(path, key="ckpt_path")
    checkpoint.setdefault("medtransfer", {}).update(entries)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    atomic_write_bytes(path, buffer.getbuffer())
