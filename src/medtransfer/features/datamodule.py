"""Linear probing on cached features: when the backbone is frozen for the whole run (BatchNorm on its
running statistics) and training uses no augmentation, every image's features are fixed, so they are
computed once per split (feature_cache.py) and the head trains on them. The loaders keep the image
loaders' batch size, shuffling and sampler, so a seed gives the same head as the uncached run."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from medtransfer.data.datamodule import MedicalImageDataModule, SplitLoaders
from medtransfer.data.splits import SPLITS
from medtransfer.data.transforms import augments
from medtransfer.features.cache import FeatureCache, split_fingerprint, state_fingerprint
from medtransfer.models.classifier import Classifier
from medtransfer.models.inference import outputs
from medtransfer.utils.errors import ConfigError

log = logging.getLogger(__name__)

STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}


class FeatureDataModule(SplitLoaders, L.LightningDataModule):
    """The loaders of `images`, each image replaced by the `model` backbone's features of it.

    What callbacks read from a data module (`dataset`: the images, `summary`, the split tables) comes from
    `images`, so sample grids and Grad-CAM still see images."""

    def __init__(
        self,
        images: MedicalImageDataModule,
        model: Classifier,
        cache: FeatureCache,
        device: torch.device | str = "cpu",
        forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        precision: str = "32-true",
    ):
        super().__init__()
        self.images = images
        self.model = model
        self.cache = cache
        self.device = torch.device(device)
        self.forward_context = forward_context
        self.precision = precision
        self.features: dict[str, torch.Tensor] = {}
        self.from_cache: dict[str, bool] = {}

    def setup(self, stage: str | None = None) -> None:
        self.images.trainer = self.trainer  # its loaders choose workers and pinning by the accelerator
        self.images.setup(stage)
        for split in STAGE_SPLITS.get(stage, SPLITS):
            self.split_features(split)

    @cached_property
    def backbone_state(self) -> str:
        """The frozen backbone's fingerprint, hashed once for all splits."""
        return state_fingerprint(self.model.backbone)

    def split_features(self, split: str) -> torch.Tensor:
        if split not in self.features:
            part = self.images.data.splits[split]
            labels = self.images.dataset(split).labels
            backbone = self.model.backbone
            fields = {
                "backbone": self.model.hparams.backbone,
                "backbone_state": self.backbone_state,
                "split": split,
                "data": split_fingerprint(part),
                "decode": self.images.decode_options(),
                "channels": self.images.num_channels,
                "transform": repr(self.images.dataset(split).transform),
                "precision": self.precision,
            }

            def compute() -> tuple[torch.Tensor, torch.Tensor]:
                home = next(backbone.parameters()).device
                backbone.to(self.device)
                # iterating a loader draws a seed from the global random stream: forked, so that the run's
                # shuffling stays that of the same run on images
                try:
                    with torch.random.fork_rng(devices=[]):
                        return outputs(
                            backbone, self.images.dataloader(split), self.device, self.forward_context
                        )
                finally:
                    backbone.to(home)

            self.features[split], self.from_cache[split] = self.cache.get_or_compute(fields, labels, compute)
        return self.features[split]

    def _loader(self, split: str, training: bool) -> DataLoader:
        dataset = TensorDataset(self.split_features(split), self.images.dataset(split).labels)
        return self.images.loader(dataset, training)

    # what callbacks read from the data module: the images'
    def dataset(self, split: str):
        return self.images.dataset(split)

    def summary(self) -> dict:
        return self.images.summary() | {"features_cached": dict(self.from_cache)}

    def write_splits_csv(self, path: str | Path) -> bool:
        return self.images.write_splits_csv(path)

    def write_skipped_csv(self, path: str | Path) -> bool:
        return self.images.write_skipped_csv(path)

    def write_folds_csv(self, path: str | Path) -> bool:
        return self.images.write_folds_csv(path)


def why_not_cached(model: Classifier, images: MedicalImageDataModule, world_size: int) -> str | None:
    """Why the head cannot train on cached features in this run (None: it can)."""
    if not (model.strategy.static and model.backbone_frozen):
        return f"the backbone trains (finetune={model.strategy.name}, bn={model.strategy.bn})"
    if augments(images.augment):
        return "training augments the images (data.augment); data.augment=null fixes each image's features"
    if world_size > 1:
        return "it runs on one process only (DDP would compute every feature on every rank)"
    return None


def head_training_data(
    images: MedicalImageDataModule,
    model: Classifier,
    trainer: L.Trainer,
    enabled: bool | str = "auto",
    directory: str | Path | None = None,
) -> MedicalImageDataModule | FeatureDataModule:
    """The data module to fit and test on: cached features when `enabled` (auto | true | false) allows it
    and the run can use them, else `images`. enabled=true in a run that cannot is a ConfigError."""
    if enabled not in ("auto", True, False):
        raise ConfigError(f"feature_cache.enabled={enabled!r}: use auto, true or false.")
    if enabled is False:
        return images
    reason = why_not_cached(model, images, trainer.world_size)
    if reason:
        if enabled is True:
            raise ConfigError(f"feature_cache.enabled=true, but the features cannot be cached: {reason}.")
        if model.backbone_frozen:
            log.info("Linear probe on images, not cached features: %s.", reason)
        return images
    log.info("Linear probe: the head trains on backbone features computed once per split.")
    return FeatureDataModule(
        images,
        model,
        FeatureCache(directory),
        device=trainer.strategy.root_device,
        forward_context=trainer.precision_plugin.forward_context,
        precision=str(trainer.precision),
    )
