"""At the end of training: Grad-CAM overlays of a fixed set of validation images, correct and wrong ones
of every class, explained by the best checkpoint (with its fitted temperature and threshold), as a grid in
TensorBoard (`val/explanations`) and explanations.png in the run dir.

The set is fixed: validation images in a seeded order, the first ones per (class, correct|wrong) taken.
Per class up to ceil(images / classes) overlays, half of them mistakes when there are that many.

Multi-label models: with `label` (callbacks.explanations.label=Effusion) the heatmaps explain that label,
on images with and without it (half of each row mistakes when there are that many); without, each image
(those with findings first) is explained for its top-scoring label."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from medtransfer.evaluation.explanations import check_method, heatmaps, overlay
from medtransfer.evaluation.plots import overlay_grid_figure, save_figure
from medtransfer.models.checkpoint import best_model, best_validation_outputs
from medtransfer.utils.errors import ConfigError


class ExplanationGrid(L.Callback):
    def __init__(
        self,
        output_dir: str | None = None,
        method: str = "gradcam",
        images: int = 8,
        seed: int = 0,
        label: str | None = None,
    ):
        check_method(method)
        self.label = label
        self.output_dir = Path(output_dir) if output_dir else None
        self.method = method
        self.images = int(images)
        self.seed = seed

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.images <= 0 or trainer.datamodule is None or trainer.fast_dev_run:
            return
        logits, _ = best_validation_outputs(trainer, pl_module)
        with best_model(trainer, pl_module) as model:
            fig = self.figure(model, trainer.datamodule, model.device, logits)
        if fig is None:
            return
        path = None
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            path = self.output_dir / "explanations.png"
        save_figure(fig, path, trainer.loggers, "val/explanations", trainer.global_step, dpi=110)

    def scan(self, model, logits: torch.Tensor) -> tuple[list[int], torch.Tensor]:
        """Validation indices in the seeded order and the deployed model's probabilities of them, from the
        best checkpoint's validation logits (N, classes) in loader order."""
        order = torch.randperm(len(logits), generator=torch.Generator().manual_seed(self.seed)).tolist()
        return order, model.probabilities_of(logits[order])

    def select_multilabel(self, model, datamodule, logits) -> tuple[list[tuple[int, int, float]], list]:
        """(index, explained label, its probability) of the chosen images, and their row keys."""
        names = model.class_names
        if self.label is not None and self.label not in names:
            raise ConfigError(
                f"callbacks.explanations.label={self.label!r}: not one of the labels ({', '.join(names)})."
            )
        labels = datamodule.dataset("val").labels
        order, probs = self.scan(model, logits)
        decided = model.decide(probs)
        if self.label is None:  # images with findings first, each explained for its top-scoring label
            ranked = sorted(range(len(order)), key=lambda j: not bool((labels[order[j]] == 1).any()))
            chosen = []
            for j in ranked[: self.images]:
                top = int(probs[j].argmax())
                chosen.append((order[j], top, float(probs[j, top])))
            return chosen, ["" for _ in chosen]
        k = names.index(self.label)
        per_row = math.ceil(self.images / 2)
        chosen, keys = [], []
        for truth in (1, 0):
            found = {True: [], False: []}
            for j, i in enumerate(order):
                if labels[i, k] == truth:
                    found[bool(decided[j, k] == truth)].append((i, k, float(probs[j, k])))
            wrong = found[False][: per_row // 2]
            right = found[True][: per_row - len(wrong)]
            wrong = found[False][: per_row - len(right)]
            chosen += right + wrong
            keys += [truth] * len(right + wrong)
        return chosen, keys

    def multilabel_figure(self, model, datamodule, device, logits):
        chosen, keys = self.select_multilabel(model, datamodule, logits)
        if not chosen:
            return None
        names = model.class_names
        dataset = datamodule.dataset("val")
        items = [dataset[i] for i, _, _ in chosen]
        maps = heatmaps(
            model, torch.stack([x for x, _ in items]).to(device), [k for _, k, _ in chosen], self.method
        )
        thresholds = model.thresholds
        rows: dict = {}
        for n, ((_, k, prob), (image, target), heat, key) in enumerate(
            zip(chosen, items, maps, keys, strict=True)
        ):
            truth = "|".join(c for c, t in zip(names, target.tolist(), strict=True) if t == 1) or "none"
            rows.setdefault(key if self.label is not None else n // 4, []).append(
                {
                    "image": overlay(self.shown(model, image), heat),
                    "caption": f"{names[k]} {prob:.2f}\ntrue: {truth}"[:60],
                    "correct": (prob >= float(thresholds[k])) == (float(target[k]) == 1),
                }
            )
        if self.label is not None:
            order = [key for key in (1, 0) if key in rows]
            row_labels = [self.label if key == 1 else f"no {self.label}" for key in order]
            title = f"{self.method} of {self.label} on validation images (red: mistakes at its threshold)"
            return overlay_grid_figure([rows[key] for key in order], row_labels, title)
        return overlay_grid_figure(
            list(rows.values()),
            ["" for _ in rows],
            f"{self.method} of each image's top-scoring label (red: wrong at its threshold)",
            row_prefix="",
        )

    @staticmethod
    def shown(model, image: torch.Tensor) -> torch.Tensor:
        """The network input back as uint8 (C, H, W)."""
        mean = torch.tensor(model.preprocessing["mean"]).view(-1, 1, 1)
        std = torch.tensor(model.preprocessing["std"]).view(-1, 1, 1)
        return ((image * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)

    def select(self, model, datamodule, logits) -> list[tuple[int, int, float]]:
        """(index, predicted class, its probability) of the chosen images, in class order."""
        num_classes = model.hparams.num_classes
        per_class = math.ceil(self.images / num_classes)
        wanted_wrong = per_class // 2
        labels = datamodule.dataset("val").labels
        order, probs = self.scan(model, logits)
        found: dict[tuple[int, bool], list[tuple[int, int, float]]] = {}
        for i, y, p, pred in zip(order, labels[order], probs, model.decide(probs), strict=True):
            key = (int(y), int(pred) == int(y))
            found.setdefault(key, []).append((i, int(pred), float(p[pred])))
        chosen = []
        for c in range(num_classes):
            wrong = found.get((c, False), [])[:wanted_wrong]
            right = found.get((c, True), [])[: per_class - len(wrong)]
            wrong = found.get((c, False), [])[: per_class - len(right)]
            chosen += right + wrong
        return chosen

    def figure(self, model, datamodule, device, logits):
        """The grid figure, or None when the split gave no image. logits: the best checkpoint's on the
        validation split (models/checkpoint.py `best_validation_outputs`)."""
        if model.task.multilabel:
            return self.multilabel_figure(model, datamodule, device, logits)
        chosen = self.select(model, datamodule, logits)
        dataset = datamodule.dataset("val")
        if not chosen:
            return None
        names = model.class_names
        items = [dataset[i] for i, _, _ in chosen]
        x = torch.stack([image for image, _ in items]).to(device)
        maps = heatmaps(model, x, [pred for _, pred, _ in chosen], self.method)
        rows: dict[int, list[dict]] = {}
        for (_, pred, prob), (image, label), heat in zip(chosen, items, maps, strict=True):
            rows.setdefault(int(label), []).append(
                {
                    "image": overlay(self.shown(model, image), heat),
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
