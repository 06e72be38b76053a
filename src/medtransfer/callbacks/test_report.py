"""The test split's report (evaluation/split_report.py) at the end of the test epoch, from the raw logits
and targets the test steps returned (gathered over DDP ranks): figures and the per-class report into the
run dir and TensorBoard; its numbers logged as metrics, so `trainer.test` returns them with the others."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from medtransfer.evaluation.split_report import evaluation_report


class TestReport(L.Callback):
    __test__ = False  # not a pytest test class

    def __init__(self, output_dir: str | None = None, bootstrap_samples: int = 1000, bootstrap_seed: int = 0):
        self.output_dir = Path(output_dir) if output_dir else None
        self.bootstrap_samples = int(bootstrap_samples)
        self.bootstrap_seed = int(bootstrap_seed)
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._logits, self._targets = [], []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        self._logits.append(outputs["logits"])
        self._targets.append(outputs["targets"])

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._logits:
            return
        logits, targets = torch.cat(self._logits), torch.cat(self._targets)
        if trainer.world_size > 1:  # every rank's images (the sampler gave each rank an equal share)
            logits = pl_module.all_gather(logits).flatten(0, 1)
            targets = pl_module.all_gather(targets).flatten(0, 1)
        self._logits, self._targets = [], []
        if not trainer.is_global_zero:
            return
        report = evaluation_report(
            pl_module,
            logits,
            targets,
            "test",
            self.output_dir,
            trainer.loggers,
            trainer.global_step,
            self.bootstrap_samples,
            self.bootstrap_seed,
        )
        for name, value in report.items():
            pl_module.log(name, float(value), rank_zero_only=True)
