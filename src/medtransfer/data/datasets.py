"""Map-style datasets that yield (image tensor, label): images in memory (one array, or a list of tensors
of mixed sizes), or image files decoded on read. A label is a class index (int64), or for multi-label
data a float32 vector (1 / 0 / NaN unknown)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medtransfer.data.files.decode import read_image


def label_tensor(labels: np.ndarray) -> torch.Tensor:
    """(N,) class indices as int64; (N, L) multi-label targets as float32 (NaN kept: unknown)."""
    labels = np.asarray(labels)
    return torch.as_tensor(labels, dtype=torch.float32 if labels.ndim == 2 else torch.long)


class TensorListDataset(Dataset):
    """uint8 (C, H, W) tensors held in memory, one per image, of any sizes (decoded files kept in RAM)."""

    def __init__(self, images: Sequence[torch.Tensor], labels: np.ndarray, transform: Callable | None = None):
        self.images = images if isinstance(images, torch.Tensor) else list(images)
        self.labels = label_tensor(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.image(i)
        return (self.transform(image) if self.transform else image), self.labels[i]

    def image(self, i: int) -> torch.Tensor:
        return self.images[i]


class ArrayDataset(TensorListDataset):
    """uint8 images held in memory as one array, (N, H, W) or (N, H, W, C)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None):
        tensor = torch.from_numpy(images if images.ndim == 4 else images[..., None]).permute(0, 3, 1, 2)
        super().__init__(tensor, labels, transform)


class FileDataset(TensorListDataset):
    """Image files decoded on read to `channels` channels. decode_options: keyword arguments of
    `read_image` (a DICOM window)."""

    def __init__(
        self,
        paths: Sequence[str],
        labels: np.ndarray,
        channels: int,
        transform: Callable | None = None,
        decode_options: Mapping | None = None,
    ):
        super().__init__([], labels, transform)
        self.paths = list(paths)
        self.channels = channels
        self.decode_options = dict(decode_options or {})

    def image(self, i: int) -> torch.Tensor:
        return read_image(self.paths[i], self.channels, **self.decode_options)
