"""Loading a medtransfer checkpoint back into a model, with its data config, preprocessing, temperature and
threshold; adding what is fitted after training to a checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from medtransfer.models.classifier import Classifier
from medtransfer.utils.errors import ConfigError


def load_classifier(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> Classifier:
    """The trained classifier (eval mode), from a medtransfer checkpoint (checked by `check_checkpoint`:
    ConfigError for a missing, foreign or unreadable file). Pretrained weights are not fetched again: the checkpoint has them.
    The backbone is not compiled (model.compile is for training): evaluation, prediction and Grad-CAM run
    eagerly, with no warm-up and no compiler needed on the machine."""
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={path}: no such file. Give a checkpoint such as <run dir>/checkpoints/best.ckpt."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, or pickled objects that weights_only refuses
        raise ConfigError(
            f"ckpt_path={path}: not a medtransfer checkpoint (torch cannot read it safely: "
            f"{err.__class__.__name__}). Give <run dir>/checkpoints/best.ckpt of a medtransfer-train run."
        ) from None
    check_checkpoint(checkpoint, path)
    del checkpoint
    model = Classifier.load_from_checkpoint(
        path, map_location=map_location, weights_only=True, weights=None, compile=False
    )
    return model.eval()


MEDTRANSFER_HPARAMS = ("backbone", "num_classes", "in_channels")


def check_checkpoint(checkpoint, path: str | Path) -> None:
    """Raise ConfigError unless `checkpoint` (what torch.load returned for `path`) is a medtransfer
    classifier checkpoint: a dict with `state_dict`, `hyper_parameters` holding medtransfer's model
    arguments (backbone, num_classes, in_channels) and the `medtransfer` section (class names,
    preprocessing). Called before a model is built, so that a foreign file gets one sentence, not a
    KeyError from deep inside Lightning."""
    fix = "Give <run dir>/checkpoints/best.ckpt (or last.ckpt) of a medtransfer-train run."
    if not isinstance(checkpoint, dict):
        raise ConfigError(
            f"ckpt_path={path}: not a checkpoint (it holds a {type(checkpoint).__name__}). {fix}"
        )
    if not isinstance(checkpoint.get("state_dict"), dict):
        tensors = any(isinstance(v, torch.Tensor) for v in checkpoint.values())
        hint = (
            " It looks like bare weights (a state dict): to start training from them use "
            f"medtransfer-train model.weights={path}."
            if tensors
            else ""
        )
        raise ConfigError(f"ckpt_path={path}: not a Lightning checkpoint (no state_dict).{hint} {fix}")
    hparams = checkpoint.get("hyper_parameters") or {}
    lacking = [k for k in MEDTRANSFER_HPARAMS if k not in hparams]
    if lacking or not isinstance(checkpoint.get("medtransfer"), dict):
        what = f"no {', '.join(lacking)} in its hyper_parameters" if lacking else "no medtransfer section"
        raise ConfigError(
            f"ckpt_path={path}: a checkpoint, but not of a medtransfer classifier ({what}); to start "
            f"training from its weights use medtransfer-train model.weights={path}. {fix}"
        )


def add_to_checkpoint(ckpt_path: str | Path, **entries) -> None:
    """Store `entries` in the checkpoint's medtransfer section, in place (written to a temporary file,
    then renamed, so a crash never leaves half a checkpoint). Values must be plain data (weights_only)."""
    path = Path(ckpt_path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint.setdefault("medtransfer", {}).update(entries)
    partial = path.with_name(path.name + ".partial")
    torch.save(checkpoint, partial)
    os.replace(partial, path)
