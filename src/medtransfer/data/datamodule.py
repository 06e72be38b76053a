"""The LightningDataModule shared by every data source. A source subclass only says how to load the
splits (`load_splits`); batching, transforms, class weights, the summary and the split table live here."""

from __future__ import annotations

import csv
import os
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset

from medtransfer.data.datasets import ArrayDataset, FileDataset
from medtransfer.data.transforms import eval_transform, train_transform
from medtransfer.errors import DataError
from medtransfer.models.backbone import IMAGENET_MEAN, IMAGENET_STD

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """One split: integer labels and either uint8 images in memory or image file paths."""

    labels: np.ndarray
    paths: list[str] | None = None
    images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class SplitData:
    classes: list[str]
    splits: dict[str, Split]
    channels: int
    made_split: bool = (
        False  # True when medtransfer assigned the files to splits (then splits.csv is written)
    )
    sizes: dict[str, list[int]] = field(default_factory=dict)  # min/max height and width, when known


def default_num_workers(in_memory: bool) -> int:
    """Worker processes for the train loader: none for data already in memory (collation is cheap and
    workers would compete with the model for the cores), otherwise one less than the cores, up to 8."""
    if in_memory:
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """A split name per item: each class divided in the same proportions, shuffled by `seed`."""
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), dtype=object)
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = round(test_fraction * len(idx))
        n_val = round(val_fraction * len(idx))
        assignment[idx[:n_test]] = "test"
        assignment[idx[n_test : n_test + n_val]] = "val"
        assignment[idx[n_test + n_val :]] = "train"
    return assignment


class MedicalImageDataModule(L.LightningDataModule):
    """Common data module. Sources override `load_splits` and `describe_source`.

    image_size: side of the square network input. augment: see `train_transform`.
    num_workers: an int, or "auto". mean/std: set by training from the backbone's weights.
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
    ):
        super().__init__()
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or 2 * batch_size)
        self.num_workers = num_workers
        self.augment = dict(augment or {})
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.pin_memory = pin_memory
        self.mean: Sequence[float] | None = None
        self.std: Sequence[float] | None = None
        self.data: SplitData | None = None
        self._datasets: dict[str, Dataset] = {}

    # ------------------------------------------------------------ sources
    @abstractmethod
    def load_splits(self) -> SplitData:
        """Read the source and return its splits."""

    def describe_source(self) -> dict:
        return {}

    # -------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            self.data = self.load_splits()
            for name in SPLITS:
                if name not in self.data.splits or len(self.data.splits[name]) == 0:
                    raise DataError(f"The {name} split is empty: {self.describe_source()}")

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
        self.setup()
        labels = self.data.splits[split].labels
        return np.bincount(labels, minlength=self.num_classes).tolist()

    def class_weights(self) -> list[float]:
        """Inverse class frequency on the training split, normalised so that a balanced set gives 1."""
        counts = np.maximum(np.array(self.class_counts("train"), dtype=float), 1)
        return (counts.sum() / (len(counts) * counts)).round(6).tolist()

    # ----------------------------------------------------------- datasets
    def _normalization(self) -> tuple[list[float], list[float]]:
        if self.mean is not None:
            return list(self.mean), list(self.std)
        c = self.num_channels
        mean = list(IMAGENET_MEAN) if c == 3 else [sum(IMAGENET_MEAN) / 3] * c
        std = list(IMAGENET_STD) if c == 3 else [sum(IMAGENET_STD) / 3] * c
        return mean, std

    def transform(self, split: str):
        mean, std = self._normalization()
        if split == "train":
            return train_transform(self.image_size, mean, std, self.augment)
        return eval_transform(self.image_size, mean, std)

    def dataset(self, split: str) -> Dataset:
        if split not in self._datasets:
            self.setup()
            part = self.data.splits[split]
            transform = self.transform(split)
            if part.images is not None:
                self._datasets[split] = ArrayDataset(part.images, part.labels, transform)
            else:
                self._datasets[split] = FileDataset(part.paths, part.labels, self.data.channels, transform)
        return self._datasets[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.dataset(split)
        in_memory = self.data.splits[split].images is not None
        workers = default_num_workers(in_memory) if self.num_workers == "auto" else int(self.num_workers)
        pin = self.pin_memory
        if pin == "auto":
            pin = (
                self.trainer is not None and self.trainer.accelerator.__class__.__name__ == "CUDAAccelerator"
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            shuffle=shuffle,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=bool(pin),
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def dataloader(self, split: str) -> DataLoader:
        return self._loader(split, shuffle=False)

    # ---------------------------------------------------------- reporting
    def summary(self) -> dict:
        """Classes, counts per split, class weights, channels: what goes into data_summary.json."""
        self.setup()
        counts = {s: dict(zip(self.classes, self.class_counts(s), strict=True)) for s in SPLITS}
        return {
            "source": self.describe_source(),
            "classes": self.classes,
            "num_classes": self.num_classes,
            "channels": self.num_channels,
            "image_size": self.image_size,
            "counts": counts,
            "totals": {s: len(self.data.splits[s]) for s in SPLITS},
            "class_weights": dict(zip(self.classes, self.class_weights(), strict=True)),
            "original_sizes": self.data.sizes,
        }

    def write_splits_csv(self, path: str | Path) -> bool:
        """Which file went to which split, when medtransfer made the split. Returns whether it wrote."""
        self.setup()
        if not self.data.made_split:
            return False
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "split"])
            for split in SPLITS:
                part = self.data.splits[split]
                names = part.paths if part.paths is not None else [f"#{i}" for i in range(len(part))]
                for name, label in zip(names, part.labels, strict=True):
                    writer.writerow([name, self.classes[label], split])
        return True
