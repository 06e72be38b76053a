"""last.ckpt: everything to resume a run (weights, optimizer and scheduler state, loops, callbacks), written
at the end of an epoch once `min_interval_s` seconds have passed since the previous write, and at the end
of training; on Ctrl-C / SIGTERM SaveOnInterrupt writes it at once. A crash that no signal announces (a
killed node) loses at most that long of training; short epochs (a GPU, a linear probe) no longer pay a
full checkpoint each (benchmarks/sweep_overhead.py). min_interval_s=0: every epoch."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint without a monitor (`filename`: last) that skips the epochs ending less than
    `min_interval_s` seconds after its previous write, and writes once more at the end of training when it
    skipped the last ones. Every rank takes the same decision (rank zero's clock)."""

    def __init__(self, min_interval_s: float = 60.0, **kwargs):
        super().__init__(save_on_train_epoch_end=True, **kwargs)
        self.min_interval_s = float(min_interval_s)
        self._written_at = time.monotonic()
        self._skipped = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._written_at = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        due = self.min_interval_s <= 0 or time.monotonic() - self._written_at >= self.min_interval_s
        if not trainer.strategy.broadcast(due, src=0):
            self._skipped = True
            return
        super().on_train_epoch_end(trainer, pl_module)
        self._written_at, self._skipped = time.monotonic(), False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self._skipped and self.dirpath is not None:
            path = Path(self.dirpath) / f"{self.filename or 'last'}{self.FILE_EXTENSION}"
            trainer.save_checkpoint(path, self.save_weights_only)
            self.last_model_path, self._skipped = str(path), False
