"""Ctrl-C, SIGTERM (preemption, `scancel`, a sweep being stopped): save last.ckpt before the run ends, so
nothing trained is lost and `resume=<run dir>` continues from there."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info


class SaveOnInterrupt(L.Callback):
    def __init__(self, path: str):
        self.path = Path(path)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, KeyboardInterrupt | SIGTERMException) and trainer.state.fn == "fit":
            if getattr(pl_module, "loss_diverged", False):  # NaN weights must not replace good ones
                rank_zero_info(f"Interrupted after the loss became NaN/Inf: {self.path} is left as it was.")
                return
            trainer.save_checkpoint(self.path)  # every rank takes part; rank zero writes
            rank_zero_info(
                f"Interrupted: saved {self.path}; continue with medtransfer-train resume={self.path.parent.parent}"
            )
