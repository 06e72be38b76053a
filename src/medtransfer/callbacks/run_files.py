"""Writes the data description of a run into its directory: data_summary.json, splits.csv (when
medtransfer made the split), folds.csv (with data.folds) and skipped.csv (when data.on_bad=skip left files out)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from medtransfer.utils.atomic_write import atomic_write_json


class RunFiles(L.Callback):
    def __init__(self, output_dir: str):
        self.output_dir = Path(output_dir)

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.output_dir / "data_summary.json", dm.summary())
        dm.write_splits_csv(self.output_dir / "splits.csv")
        dm.write_folds_csv(self.output_dir / "folds.csv")
        dm.write_skipped_csv(self.output_dir / "skipped.csv")
