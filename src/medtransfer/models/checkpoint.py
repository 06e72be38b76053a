"""Loading a medtransfer checkpoint back into a model, with its data config, preprocessing, temperature and
threshold; adding what is fitted after training to a checkpoint.

A checkpoint is data: it is read with torch.load(weights_only=True), and what it names is mapped to code
only through the project's own tables (the heads of models/heads.py, DATA_SOURCES below), never by
instantiating a stored `_target_`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from medtransfer.models.classifier import CHECKPOINT_FORMAT, Classifier
from medtransfer.utils.atomic_write import atomic_write_with
from medtransfer.utils.checkpoint_io import AtomicCheckpointIO, load_checkpoint_file
from medtransfer.utils.errors import ConfigError

# the data modules a checkpoint's data config may name (medtransfer-eval rebuilds its data from it)
DATA_SOURCES = (
    "medtransfer.data.sources.folder.FolderDataModule",
    "medtransfer.data.sources.csv_manifest.CsvDataModule",
    "medtransfer.data.sources.medmnist.MedMNISTDataModule",
)


def load_classifier(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> Classifier:
    """The trained classifier (eval mode). Pretrained weights are not fetched again: the checkpoint has them.
    The backbone is not compiled (model.compile is for training): evaluation, prediction and Grad-CAM run
    eagerly, with no warm-up and no compiler needed on the machine. Missing, damaged or pickled files
    (weights_only whatever the environment says), foreign checkpoints (`check_checkpoint`) and
    checkpoints of an earlier medtransfer format are a ConfigError."""
    checkpoint = load_checkpoint_file(ckpt_path, map_location=map_location, key="ckpt_path")
    check_checkpoint(checkpoint, ckpt_path)
    found = checkpoint["medtransfer"].get("format", 1)
    if found != CHECKPOINT_FORMAT:
        raise ConfigError(
            f"ckpt_path={ckpt_path}: a checkpoint of format {found} (medtransfer < 0.2, which stored code "
            f"references); this medtransfer ({CHECKPOINT_FORMAT}) reads plain-data checkpoints only. "
            "Train again, or evaluate it with the medtransfer version that wrote it."
        )
    model = Classifier(**{**checkpoint["hyper_parameters"], "weights": None, "compile": False})
    model.load_state_dict(checkpoint["state_dict"])
    model.on_load_checkpoint(checkpoint)
    return model.to(map_location).eval()


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


def add_to_checkpoint(ckpt_path: str | Path, checkpoint_io=None, **entries) -> None:
    """Store `entries` in the checkpoint's medtransfer section: in the copy a run's `AtomicCheckpointIO`
    (`checkpoint_io`, the trainer's) still holds in memory, written with them later; else in the file, in
    place (written to a temporary file, fsynced, then renamed, so a crash or a full disk never leaves half a
    checkpoint). Values must be plain data (weights_only)."""
    if isinstance(checkpoint_io, AtomicCheckpointIO) and checkpoint_io.update_held(ckpt_path, **entries):
        return
    path = Path(ckpt_path)
    checkpoint = load_checkpoint_file(path, key="ckpt_path")
    checkpoint.setdefault("medtransfer", {}).update(entries)
    atomic_write_with(path, lambda f: torch.save(checkpoint, f))


@contextmanager
def best_model(trainer, pl_module: Classifier) -> Iterator[Classifier]:
    """The run's best checkpoint as a model on the trainer's device (`pl_module` itself when no checkpoint
    was written, moved back to the CPU after): what the end-of-fit callbacks fit and explain."""
    callback = trainer.checkpoint_callback
    best = callback.best_model_path if callback and callback.best_model_path else None
    model = load_classifier(best) if best else pl_module
    try:
        yield model.to(trainer.strategy.root_device)
    finally:
        if model is pl_module:
            model.cpu()


def best_validation_outputs(trainer, pl_module: Classifier) -> tuple[torch.Tensor, torch.Tensor]:
    """The best checkpoint's raw logits (N, classes) and targets on the whole validation split, in loader
    order, on the CPU: those its own validation epoch computed (`Classifier.best_val_outputs`) when they are
    known to be the checkpoint's (one process, every validation batch run, the stored value is the one the
    checkpoint callback kept), otherwise a pass of `best_model` over the validation loader."""
    stored = pl_module.best_val_outputs
    callback = trainer.checkpoint_callback
    if (
        stored is not None
        and trainer.world_size == 1
        and callback is not None
        and callback.best_model_path
        and callback.monitor == pl_module.hparams.monitor
        and callback.best_model_score is not None
        and float(callback.best_model_score) == stored.score
        and len(stored.targets) == len(trainer.datamodule.dataset("val"))
    ):
        return stored.logits, stored.targets
    with best_model(trainer, pl_module) as model:
        logits, targets = model.collect_logits(trainer.datamodule.dataloader("val"))
    return logits.cpu(), targets.cpu()
