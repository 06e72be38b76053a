"""Backbone features of a data split, computed once and kept on disk, keyed by everything they depend on:
the backbone (its architecture and every weight and BatchNorm statistic), the split's images (content or
files) and labels, the transform, and the precision. A linear probe then trains its head on them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medtransfer.data.datamodule import Split
from medtransfer.utils.atomic_write import atomic_write_with
from medtransfer.utils.checkpoint_io import load_checkpoint_file

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def state_fingerprint(module: nn.Module) -> str:
    """A hash of every parameter and buffer of `module` (names, shapes, dtypes and values)."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def split_fingerprint(split: Split) -> str:
    """A hash of a split's labels and images, in order: the pixels of images held in memory, else each
    file's path, size and modification time."""
    labels = np.ascontiguousarray(split.labels)  # class indices, or multi-label targets (NaN: unknown)
    digest = hashlib.sha1(labels.astype(np.int64 if labels.ndim == 1 else np.float32).tobytes())
    if isinstance(split.images, np.ndarray):
        digest.update(f"{split.images.shape}".encode())
        digest.update(np.ascontiguousarray(split.images).tobytes())
    elif split.images is not None:
        for image in split.images:
            digest.update(f"{tuple(image.shape)}".encode())
            digest.update(image.contiguous().numpy().tobytes())
    else:
        for path in split.paths:
            st = os.stat(path)
            digest.update(f"{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def same_labels(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal labels, unknown multi-label targets (NaN) equal to each other."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(((a == b) | (torch.isnan(a) & torch.isnan(b)) if a.is_floating_point() else a == b).all())


def cache_key(fields: Mapping) -> str:
    return hashlib.sha1(json.dumps(dict(fields), sort_keys=True, default=str).encode()).hexdigest()[:24]


class FeatureCache:
    """Features stored as `<directory>/<key>.pt` (`directory` None: not stored, computed every time)."""

    def __init__(self, directory: str | Path | None):
        self.directory = Path(directory).expanduser() if directory else None

    def path(self, key: str) -> Path | None:
        return self.directory / f"{key}.pt" if self.directory else None

    def load(self, key: str, labels: torch.Tensor) -> torch.Tensor | None:
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            stored = load_checkpoint_file(path, key="feature_cache.dir")  # weights_only
        except Exception as err:  # a truncated or foreign file: computed again, and replaced
            log.warning("Feature cache %s is unreadable (%s); computing the features again.", path, err)
            return None
        if stored.get("version") != CACHE_VERSION or not same_labels(stored["labels"], labels):
            return None
        return stored["features"]

    def save(self, key: str, features: torch.Tensor, labels: torch.Tensor, fields: Mapping) -> None:
        path = self.path(key)
        if path is None:
            return
        stored = {"version": CACHE_VERSION, "features": features, "labels": labels, "fields": dict(fields)}
        try:  # atomic: two jobs of a sweep may write the same features
            atomic_write_with(path, lambda f: torch.save(stored, f))
        except OSError as err:
            log.warning(
                "Could not write the feature cache %s (%s); the next run computes them again.", path, err
            )

    def get_or_compute(
        self, fields: Mapping, labels: torch.Tensor, compute: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, bool]:
        """The features for `fields`: from the cache when stored, else computed and stored. Returns
        (features, whether they came from the cache)."""
        key = cache_key(fields)
        cached = self.load(key, labels)
        if cached is not None:
            return cached, True
        start = time.perf_counter()
        features, computed_labels = compute()
        if not same_labels(computed_labels, labels):
            raise RuntimeError("The feature loader returned the split's images out of order.")
        log.info(
            "Features of the %s split: %d x %d computed in %.1f s%s.",
            fields.get("split"),
            *features.shape,
            time.perf_counter() - start,
            f", kept in {self.path(key)}" if self.directory else "",
        )
        self.save(key, features, labels, fields)
        return features, False
