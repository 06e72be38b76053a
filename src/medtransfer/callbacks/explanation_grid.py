"""At the end of training: Grad-CAM overlays of a fixed set of validation images, correct and wrong ones
of every class, explained by the best checkpoint (with its fitted temperature and threshold), as a grid in
TensorBoard (`val/explanations`) and explanations.png in the run dir.

The set is fixed: validation images in a seeded order, the first ones per (class, correct|wrong) taken.
Per class up to ceil(images / classes) overlays, half of them mistakes when there are that many."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from medtransfer.evaluation.explanations import check_method, heatmaps, overlay
from medtransfer.evaluation.plots import overlay_grid_figure
from medtransfer.models.checkpoint import best_model

SCAN_LIMIT = 512  # validation images looked at to find mistakes (the set stays cheap on large splits)


class ExplanationGrid(L.Callback):
    def __init__(
        self, output_dir: str | None = None, method: str = "gradcam", images: int = 8, seed: int = 0
    ):
        check_method(method)
        self.output_dir = Path(output_dir) if output_dir else None
        self.method = method
        self.images = int(images)
        self.seed = seed

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.images <= 0 or trainer.datamodule is None or trainer.fast_dev_run:
            return
        with best_model(trainer, pl_module) as model:
            fig = self.figure(model, trainer.datamodule, model.device)
        if fig is None:
            return
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            fig.savefig(self.output_dir / "explanations.png", dpi=110)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(
                    "val/explanations", fig, global_step=trainer.global_step, close=False
                )
        plt.close(fig)

    def select(self, model, datamodule, device) -> list[tuple[int, int, float]]:
        """(index, predicted class, its probability) of the chosen images, in class order. The scan runs
        on the data module's model inputs (cached features, when it trains on them)."""
        num_classes = model.hparams.num_classes
        per_class = math.ceil(self.images / num_classes)
        wanted_wrong = per_class // 2
        labels = datamodule.dataset("val").labels
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        order = order[:SCAN_LIMIT].tolist()
        found: dict[tuple[int, bool], list[tuple[int, int, float]]] = {}
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            x = datamodule.inputs("val", batch).to(device)
            with torch.inference_mode():
                probs = model.probabilities(x).cpu()
            predicted = model.decide(probs)
            for i, y, p, pred in zip(batch, labels[batch], probs, predicted, strict=True):
                key = (int(y), int(pred) == int(y))
                found.setdefault(key, []).append((i, int(pred), float(p[pred])))
        chosen = []
        for c in range(num_classes):
            wrong = found.get((c, False), [])[:wanted_wrong]
            right = found.get((c, True), [])[: per_class - len(wrong)]
            wrong = found.get((c, False), [])[: per_class - len(right)]
            chosen += right + wrong
        return chosen

    def figure(self, model, datamodule, device):
        """The grid figure, or None when the split gave no image."""
        chosen = self.select(model, datamodule, device)
        dataset = datamodule.dataset("val")
        if not chosen:
            return None
        names = model.class_names
        mean = torch.tensor(model.preprocessing["mean"]).view(-1, 1, 1)
        std = torch.tensor(model.preprocessing["std"]).view(-1, 1, 1)
        items = [dataset[i] for i, _, _ in chosen]
        x = torch.stack([image for image, _ in items]).to(device)
        maps = heatmaps(model, x, [pred for _, pred, _ in chosen], self.method)
        rows: dict[int, list[dict]] = {}
        for (_, pred, prob), (image, label), heat in zip(chosen, items, maps, strict=True):
            shown = ((image * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
            rows.setdefault(int(label), []).append(
                {
                    "image": overlay(shown, heat),
                    "caption": f"pred {names[pred]} ({prob:.2f})",
                    "correct": pred == int(label),
                }
            )
        labels = sorted(rows)
        return overlay_grid_figure(
            [rows[c] for c in labels],
            [names[c] for c in labels],
            title=f"{self.method} of the best checkpoint on validation images (red: mistakes)",
        )
