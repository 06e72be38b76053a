"""Map-style datasets that yield (image tensor, label): images in memory, or image files decoded on read."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medtransfer.data.decode import read_image


class ArrayDataset(Dataset):
    """uint8 images held in memory, (N, H, W) or (N, H, W, C)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None):
        self.images = torch.from_numpy(images if images.ndim == 4 else images[..., None]).permute(0, 3, 1, 2)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.images[i]
        return (self.transform(image) if self.transform else image), self.labels[i]


class FileDataset(Dataset):
    """Image files decoded on read to `channels` channels."""

    def __init__(
        self, paths: Sequence[str], labels: np.ndarray, channels: int, transform: Callable | None = None
    ):
        self.paths = list(paths)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.channels = channels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image = read_image(self.paths[i], self.channels)
        return (self.transform(image) if self.transform else image), self.labels[i]
