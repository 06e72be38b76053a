"""The test split's confusion matrix: a figure in TensorBoard and confusion_matrix.png in the run dir.
Predicted classes as the model decides them (its threshold for binary tasks, when it has one)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from medtransfer.evaluation.plots import confusion_matrix, confusion_matrix_figure


class ConfusionMatrix(L.Callback):
    def __init__(self, output_dir: str | None = None, split: str = "test"):
        self.output_dir = Path(output_dir) if output_dir else None
        self.split = split

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.split not in pl_module.predictions:
            return
        probs, targets = pl_module.predictions[self.split]
        predicted = pl_module.decide(probs) if hasattr(pl_module, "decide") else probs.argmax(1)
        matrix = confusion_matrix(
            probs.numpy(), targets.numpy(), len(pl_module.class_names), predictions=predicted.numpy()
        )
        fig = confusion_matrix_figure(matrix, pl_module.class_names, title=f"{self.split} confusion matrix")
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            fig.savefig(self.output_dir / f"confusion_matrix_{self.split}.png", dpi=120)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(
                    f"{self.split}/confusion_matrix", fig, global_step=trainer.global_step, close=False
                )
        plt.close(fig)
