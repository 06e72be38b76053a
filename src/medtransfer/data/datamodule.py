"""The LightningDataModule shared by every data source. A source subclass only says how to load the
splits (`load_splits`); batching, transforms, class weights, the summary and the split table live here."""

from __future__ import annotations

import csv
import logging
import os
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from medtransfer.data.datasets import ArrayDataset, FileDataset, TensorListDataset
from medtransfer.data.files.validation import Problem, left_out
from medtransfer.data.splits import SPLITS
from medtransfer.data.transforms import eval_transform, train_transform
from medtransfer.evaluation.tasks import check_task
from medtransfer.utils.atomic_write import atomic_open
from medtransfer.utils.errors import ConfigError, DataError
from medtransfer.utils.normalization import IMAGENET_MEAN, IMAGENET_STD, for_channels

SAMPLERS = (None, "weighted")
MISSING_LABELS = ("mask", "negative")

log = logging.getLogger(__name__)


@dataclass
class Split:
    """One split: its labels, image file paths and/or the uint8 images in memory (an (N, H, W[, C])
    array, or a list of (C, H, W) tensors of any sizes), and the patient of each image when known.
    labels: single-label data (N,) int64 class indices; multi-label data (N, L) float32, 1 positive,
    0 negative, NaN unknown."""

    labels: np.ndarray
    paths: list[str] | None = None
    images: np.ndarray | list[torch.Tensor] | None = None
    patients: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class SplitData:
    classes: list[str]  # the class names; multi-label data: the label names, in column order
    splits: dict[str, Split]
    channels: int
    multilabel: bool = False  # labels (N, L): several labels per image (see Split)
    # True when medtransfer assigned the files to splits (then splits.csv is written)
    made_split: bool = False
    sizes: dict[str, list[int]] = field(default_factory=dict)  # min/max height and width, when known
    modes: dict[str, int] = field(default_factory=dict)  # files per colour mode (L, RGB, I;16, DICOM ...)
    skipped: list[Problem] = field(default_factory=list)  # problems left out under data.on_bad=skip


def default_num_workers(on_gpu: bool) -> int:
    """Worker processes for a loader (data.num_workers=auto). When a GPU trains, the cores are free to
    decode and augment: one less than the cores, up to 8. When the CPU trains, the model already uses
    every core, and a worker competing with it slowed training more than decoding and augmenting in the
    main process did (benchmarks/dataloader.py): none."""
    if not on_gpu:
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


class SplitLoaders:
    """Lightning's loader hooks, and `dataloader(split)` (in order, without augmentation, for evaluation:
    also of the train split), from one `_loader(split, training)`; training: the loader that trains
    (shuffled or sampled, augmented)."""

    def _loader(self, split: str, training: bool) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", training=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", training=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", training=False)

    def dataloader(self, split: str) -> DataLoader:
        return self._loader(split, training=False)


class MedicalImageDataModule(SplitLoaders, L.LightningDataModule):
    """Common data module. Sources override `load_splits` and `describe_source`.

    image_size: side of the square network input. augment: see `train_transform`.
    num_workers: an int, or "auto". mean/std: set by training from the backbone's weights.
    sampler: None (shuffle) or "weighted": every class drawn equally often in the train loader (seeded).
    task: auto (inferred: multilabel when the source gives several labels per image, else binary for two
    classes and multiclass for more) | binary | multiclass | multilabel; a stated task the data does not
    fit is a ConfigError. missing_label (multi-label data): mask (an unknown label is left out of the loss
    and metrics) | negative (read as 0).
    """

    def __init__(
        self,
        image_size: int = 224,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int | str = "auto",
        augment: Mapping | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 42,
        pin_memory: bool | str = "auto",
        sampler: str | None = None,
        task: str = "auto",
        missing_label: str = "mask",
    ):
        super().__init__()
        check_task(task)
        if missing_label not in MISSING_LABELS:
            raise ConfigError(
                f"data.missing_label={missing_label!r}: use mask (unknown labels left out of the loss) or "
                "negative (unknown read as 0)."
            )
        self.requested_task = task
        self.missing_label = missing_label
        if sampler not in SAMPLERS:
            raise ConfigError(f"data.sampler={sampler!r}: use null (shuffle) or weighted (balanced classes).")
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or 2 * batch_size)
        self.num_workers = num_workers
        self.augment = dict(augment or {})
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.pin_memory = pin_memory
        self.sampler = sampler
        self.mean: Sequence[float] | None = None
        self.std: Sequence[float] | None = None
        self.data: SplitData | None = None
        self.task: str | None = None  # resolved from data.task and the data by setup
        self._datasets: dict[tuple[str, bool], Dataset] = {}
        self.model_classes: list[str] | None = None  # set by for_evaluation
        self.model_channels: int | None = None
        self.whole = False

    def for_evaluation(
        self, model_classes: Sequence[str], whole: bool = False, channels: int | None = None
    ) -> None:
        """Read this data to evaluate a model trained on `model_classes` (call before setup).

        Classes are matched by name: every label becomes the index of its class among `model_classes`,
        whatever order or subset of them the data has (a class the model was not trained on is a DataError
        naming it); multi-label data gets the model's labels in the model's order, a label the data lacks
        unknown (NaN). A split `all` holds every image. No split needs every class, or two classes.
        whole: data without a split of its own is not split (only `all`); otherwise it is split as
        training split it (the same seed gives the same test split). channels: the model's input channels,
        what image files are decoded to (an RGB copy of a grayscale set, or the reverse)."""
        self.model_classes = [str(c) for c in model_classes]
        self.model_channels = channels
        self.whole = whole

    @property
    def evaluating(self) -> bool:
        return self.model_classes is not None

    # ------------------------------------------------------------ sources
    @abstractmethod
    def load_splits(self) -> SplitData:
        """Read the source and return its splits."""

    def describe_source(self) -> dict:
        return {}

    # -------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            data = self.load_splits()
            if data.multilabel and self.missing_label == "negative":
                for part in data.splits.values():
                    part.labels = np.nan_to_num(part.labels, nan=0.0)
            if self.evaluating:
                self.data = self.matched_to_model(data)
                self.task = "multilabel" if data.multilabel else None
                return
            for name in SPLITS:
                if name not in data.splits or len(data.splits[name]) == 0:
                    raise DataError(f"The {name} split is empty: {self.describe_source()}")
            self.task = self.resolve_task(data)
            self.data = data
            if data.multilabel:
                self._warn_findings_missing()

    def matched_to_model(self, data: SplitData) -> SplitData:
        """`data` with the model's classes (see for_evaluation) and the split `all`."""
        classes = self.model_classes
        unknown = [c for c in data.classes if c not in classes]
        if unknown:
            raise DataError(unknown_classes_message(unknown, classes, self.describe_source()))
        index = np.array([classes.index(c) for c in data.classes], dtype=np.int64)
        for part in data.splits.values():
            if data.multilabel:  # the model's label columns; one the data does not have is unknown
                labels = np.full((len(part), len(classes)), np.nan, dtype=np.float32)
                labels[:, index] = part.labels
                part.labels = labels
            else:
                part.labels = index[part.labels.astype(np.int64)]
        if "all" not in data.splits:
            data.splits["all"] = concatenated([data.splits[s] for s in SPLITS if s in data.splits])
        if not len(data.splits["all"]):
            raise DataError(f"No usable image in {self.describe_source()}: nothing to evaluate.")
        data.classes = list(classes)
        return data

    def resolve_task(self, data: SplitData) -> str:
        """The task the data fits and data.task allows (see the class docstring); ConfigError otherwise."""
        requested, where = self.requested_task, self.describe_source()
        if data.multilabel:
            if requested not in ("auto", "multilabel"):
                raise ConfigError(
                    f"data.task={requested}, but {where} gives several labels per image; set "
                    "data.task=multilabel (or auto)."
                )
            if self.sampler == "weighted":
                raise ConfigError(
                    "data.sampler=weighted balances classes, and multi-label data has no single class per "
                    "image; use data.sampler=null and model.pos_weight=auto for rare labels."
                )
            return "multilabel"
        inferred = "binary" if len(data.classes) == 2 else "multiclass"
        if requested == "multilabel":
            raise ConfigError(
                f"data.task=multilabel, but {where} gives one label per image. For a CSV manifest set "
                'data.label_sep="|" (labels joined in one column) or data.columns.labels=[...] (one 0/1 '
                "column per label); a MedMNIST .npz needs N×L labels. Or set data.task=auto."
            )
        if requested not in ("auto", inferred):
            raise ConfigError(
                f"data.task={requested}, but the data has {len(data.classes)} classes ({', '.join(data.classes)}): "
                f"that is a {inferred} task; set data.task={inferred} (or auto)."
            )
        return inferred

    @property
    def multilabel(self) -> bool:
        self.setup()
        return self.data.multilabel

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = list(mean), list(std)
        self._datasets = {}

    @property
    def classes(self) -> list[str]:
        self.setup()
        return self.data.classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_channels(self) -> int:
        self.setup()
        return self.data.channels

    def class_counts(self, split: str = "train") -> list[int]:
        """Images per class; multi-label data: positives per label."""
        self.setup()
        labels = self.data.splits[split].labels
        if self.data.multilabel:
            return (labels == 1).sum(0).astype(int).tolist()
        return np.bincount(labels, minlength=self.num_classes).tolist()

    def known_counts(self, split: str = "train") -> list[int] | None:
        """Multi-label data: images whose value of each label is known (positives + negatives); None for
        single-label data."""
        self.setup()
        if not self.data.multilabel:
            return None
        return (~np.isnan(self.data.splits[split].labels)).sum(0).astype(int).tolist()

    def _warn_findings_missing(self) -> None:
        """Multi-label data: a label without positives (or negatives) in a split has no AUROC there (it is
        left out of the macro AUROC); name each such label and split."""
        gaps = [
            f"{name} in {s} ({pos} positive, {known - pos} negative)"
            for s in SPLITS
            for name, pos, known in zip(self.classes, self.class_counts(s), self.known_counts(s), strict=True)
            if pos == 0 or pos == known
        ]
        if gaps:
            log.warning(
                "Multi-label data: %d label/split pair(s) hold one class only, so their AUROC is undefined and "
                "left out of the macro AUROC there: %s. More images with these findings (or a larger "
                "data.val_fraction / data.test_fraction when medtransfer splits) fix it.",
                len(gaps),
                "; ".join(gaps),
            )

    def class_weights(self) -> list[float]:
        """Inverse class frequency on the training split, normalised so that a balanced set gives 1.
        Multi-label data: each label's negatives / positives on train (what model.pos_weight=auto uses)."""
        counts = np.maximum(np.array(self.class_counts("train"), dtype=float), 1)
        if self.multilabel:
            negatives = np.array(self.known_counts("train"), dtype=float) - counts
            return (np.maximum(negatives, 1) / counts).round(6).tolist()
        return (counts.sum() / (len(counts) * counts)).round(6).tolist()

    # ----------------------------------------------------------- datasets
    def _normalization(self) -> tuple[list[float], list[float]]:
        if self.mean is not None:
            return list(self.mean), list(self.std)
        return for_channels(IMAGENET_MEAN, IMAGENET_STD, self.num_channels)

    def transform(self, augmented: bool):
        """The training transform (data.augment) or the evaluation transform."""
        mean, std = self._normalization()
        if augmented:
            return train_transform(self.image_size, mean, std, self.augment)
        return eval_transform(self.image_size, mean, std)

    def dataset(self, split: str, augmented: bool | None = None) -> Dataset:
        """The images of a split with the training transform (augmented; default: for the train split)
        or the evaluation transform."""
        augmented = split == "train" if augmented is None else augmented
        key = (split, augmented)
        if key not in self._datasets:
            self.setup()
            part = self.data.splits[split]
            transform = self.transform(augmented)
            if isinstance(part.images, list):
                self._datasets[key] = TensorListDataset(part.images, part.labels, transform)
            elif part.images is not None:
                self._datasets[key] = ArrayDataset(part.images, part.labels, transform)
            else:
                self._datasets[key] = FileDataset(
                    part.paths, part.labels, self.data.channels, transform, self.decode_options()
                )
        return self._datasets[key]

    def decode_options(self) -> dict:
        """Keyword arguments of `read_image` for this source's files (a DICOM window, for file sources)."""
        return {}

    def balanced_sampler(self) -> WeightedRandomSampler:
        """Each training image drawn with probability 1 / (its class's count): every class equally often
        per epoch, with replacement, seeded by data.seed."""
        labels = self.data.splits["train"].labels
        counts = np.array(self.class_counts("train"))
        weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
        return WeightedRandomSampler(
            weights, len(labels), replacement=True, generator=torch.Generator().manual_seed(self.seed)
        )

    def drop_single_last_batch(self) -> bool:
        """Whether the train loader drops its last batch: only when it would hold one image (per process),
        which BatchNorm cannot train on ("Expected more than 1 value per channel"). The order is shuffled,
        so a different image sits out each epoch. Said once in the log."""
        world = self.trainer.world_size if self.trainer is not None else 1
        per_process = -(-len(self.data.splits["train"]) // world)
        drop = self.batch_size > 1 and per_process > 1 and per_process % self.batch_size == 1
        if drop and not getattr(self, "_said_drop_last", False):
            self._said_drop_last = True
            log.warning(
                "data: %d training images per process in batches of %d leave a last batch of 1 image, which "
                "BatchNorm cannot train on; it is dropped each epoch (a different image each time, the order "
                "is shuffled). Change data.batch_size to keep every image in every epoch.",
                per_process,
                self.batch_size,
            )
        return drop

    @property
    def on_gpu(self) -> bool:
        """Whether the model runs on a CUDA GPU: the trainer's accelerator, or (no trainer yet) whether one
        is available."""
        if self.trainer is not None:
            return self.trainer.accelerator.__class__.__name__ == "CUDAAccelerator"
        return torch.cuda.is_available()

    def _loader(self, split: str, training: bool) -> DataLoader:
        dataset = self.dataset(split, augmented=training)
        workers = default_num_workers(self.on_gpu) if self.num_workers == "auto" else int(self.num_workers)
        pin = self.on_gpu if self.pin_memory == "auto" else self.pin_memory
        return self.loader(
            dataset, training, num_workers=workers, persistent_workers=workers > 0, pin_memory=bool(pin)
        )

    def loader(self, dataset: Dataset, training: bool, **options) -> DataLoader:
        """A loader of `dataset` (of the train split when `training`) batched, shuffled or sampled
        (data.sampler) and dropping a last batch of one image as this data module's own; `options`: the
        DataLoader's other arguments."""
        sampler = self.balanced_sampler() if training and self.sampler == "weighted" else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size if training else self.eval_batch_size,
            shuffle=training and sampler is None,
            sampler=sampler,
            drop_last=training and self.drop_single_last_batch(),
            **options,
        )

    # ---------------------------------------------------------- reporting
    def summary(self) -> dict:
        """Classes, counts per split, class weights, channels, image sizes and modes, skipped files: what
        goes into data_summary.json."""
        self.setup()
        counts = {s: dict(zip(self.classes, self.class_counts(s), strict=True)) for s in SPLITS}
        multilabel = {}
        if self.multilabel:  # counts are positives per label; the unknown values besides them
            unknown = {s: len(self.data.splits[s]) - np.array(self.known_counts(s)) for s in SPLITS}
            multilabel = {
                "unknown": {s: dict(zip(self.classes, n.tolist(), strict=True)) for s, n in unknown.items()},
                "missing_label": self.missing_label,
            }
        return {
            "source": self.describe_source(),
            "task": self.task,
            "task_requested": self.requested_task,
            "classes": self.classes,
            "num_classes": self.num_classes,
            "channels": self.num_channels,
            "image_size": self.image_size,
            "counts": counts,
            "totals": {s: len(self.data.splits[s]) for s in SPLITS},
            "class_totals": {c: sum(counts[s][c] for s in SPLITS) for c in self.classes},
            ("pos_weights" if self.multilabel else "class_weights"): dict(
                zip(self.classes, self.class_weights(), strict=True)
            ),
            **multilabel,
            "sampler": self.sampler,
            "original_sizes": self.data.sizes,
            "channel_modes": self.data.modes,
            "in_memory": all(self.data.splits[s].images is not None for s in SPLITS),
            "skipped_files": len(left_out(self.data.skipped)),
        }

    def skipped_rows(self) -> list[tuple[str, str, str]]:
        """(file, reason, fix) for every file left out under data.on_bad=skip (a problem without files,
        such as an empty class folder, gives its folder)."""
        self.setup()
        rows = {}
        for p in self.data.skipped:
            for path in p.leave_out or (p.file,):
                rows.setdefault(path, (path, p.reason, p.fix))
        return list(rows.values())

    def write_skipped_csv(self, path: str | Path) -> bool:
        """The files left out, with reason and fix, when any were. Returns whether it wrote."""
        rows = self.skipped_rows()
        if rows:
            write_csv(path, ["file", "reason", "fix"], rows)
        return bool(rows)

    def write_folds_csv(self, path: str | Path) -> bool:
        """Which image is in which cross-validation fold (sources with data.folds). Returns whether it wrote."""
        return False

    def write_splits_csv(self, path: str | Path) -> bool:
        """Which file went to which split, when medtransfer made the split. Returns whether it wrote."""
        self.setup()
        if not self.data.made_split:
            return False
        self.write_image_table(path, "split", lambda split, name: split)
        return True

    def write_image_table(
        self, path: str | Path, column: str, value: Callable[[str, str], object], by_path: bool = False
    ) -> None:
        """A CSV of every image of the train, val and test splits: path (#index for images without a file),
        label (`label_text`), `column` (value(split, path)), and patient when any is known; in split order,
        or sorted by path."""
        rows = []
        for split in SPLITS:
            part = self.data.splits[split]
            names = part.paths if part.paths is not None else [f"#{i}" for i in range(len(part))]
            patients = part.patients or [None] * len(part)
            for name, label, patient in zip(names, part.labels, patients, strict=True):
                rows.append([name, self.label_text(label), value(split, name), patient or ""])
        with_patients = any(r[3] for r in rows)
        header = ["path", "label", column, *(["patient"] if with_patients else [])]
        write_csv(path, header, (r if with_patients else r[:3] for r in (sorted(rows) if by_path else rows)))

    def label_text(self, label) -> str:
        """A label as text: the class name; multi-label data: the positive labels joined by |, unknown
        ones as ?name."""
        if not self.multilabel:
            return self.classes[label]
        return "|".join(
            ("?" if np.isnan(v) else "") + c for c, v in zip(self.classes, label, strict=True) if v != 0
        )


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """A CSV file of `rows` under `header`, written atomically. File names that are not UTF-8 are
    written as their bytes (surrogateescape), as they are on disk."""
    with atomic_open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def concatenated(parts: Sequence[Split]) -> Split:
    """One split holding the images of `parts`, in order."""
    labels = np.concatenate([p.labels for p in parts])
    paths = [q for p in parts for q in p.paths] if all(p.paths is not None for p in parts) else None
    images = None
    if all(isinstance(p.images, np.ndarray) for p in parts):
        images = np.concatenate([p.images for p in parts])
    elif all(p.images is not None for p in parts):
        images = [image for p in parts for image in p.images]
    patients = None
    if any(p.patients for p in parts):
        patients = [q for p in parts for q in (p.patients or [None] * len(p))]
    return Split(labels=labels, paths=paths, images=images, patients=patients)


def unknown_classes_message(unknown: Sequence[str], trained: Sequence[str], source: Mapping) -> str:
    """The error for data classes a model was not trained on: which, where, the trained ones, the fix."""
    where = ", ".join(f"{k}={v}" for k, v in source.items() if k in ("root", "manifest", "path")) or source
    lowered = {c.lower(): c for c in trained}
    hints = [f"{u!r} is probably {lowered[u.lower()]!r}" for u in unknown if u.lower() in lowered]
    return (
        f"The data ({where}) has class(es) {', '.join(map(repr, unknown))} that the checkpoint was not "
        f"trained on; its classes are {', '.join(map(repr, trained))}. Classes are matched by name"
        + (f" ({'; '.join(hints)})" if hints else "")
        + ": rename each class folder (or the label in the manifest, or data.class_names of an .npz) to the "
        "trained class its images show, or leave those images out. A subset of the trained classes is fine."
    )
