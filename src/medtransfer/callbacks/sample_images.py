"""A grid of augmented training images in TensorBoard at the start, to see what the network sees."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid


class SampleImages(L.Callback):
    def __init__(self, count: int = 16, seed: int = 0):
        self.count = count
        self.seed = seed

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        dataset = trainer.datamodule.dataset("train")
        generator = torch.Generator().manual_seed(self.seed)
        idx = torch.randperm(len(dataset), generator=generator)[: self.count].tolist()
        with torch.random.fork_rng():  # augmentation draws must not shift the training run's random stream
            torch.manual_seed(self.seed)
            images = torch.stack([dataset[i][0] for i in idx])
        mean = torch.tensor(pl_module.preprocessing["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(pl_module.preprocessing["std"]).view(1, -1, 1, 1)
        grid = make_grid((images * std + mean).clamp(0, 1), nrow=8)
        for logger in loggers:
            logger.experiment.add_image("train/augmented_samples", grid, global_step=0)
