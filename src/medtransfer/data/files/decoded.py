"""Decoded images kept for the next job of the same process. A Hydra sweep runs its jobs one after another
in one process (the basic launcher); each job that keeps its images in RAM (data.cache) would decode the
same files again. The images of the last data set decoded are kept instead, keyed by the files' paths,
sizes and modification times (the inspection's fingerprint), the channels and the decoding options: a job
reading the same files, unchanged, takes them; any other data set replaces them (one data set is held at
most, and the old one is let go before the new one is decoded)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from medtransfer.data.files.decode import read_image

_last: tuple[tuple, dict[str, torch.Tensor]] | None = None  # (key, {path: uint8 (C, H, W) image})


def decode_files(
    paths: Sequence[str], channels: int, options: dict, files: str
) -> tuple[dict[str, torch.Tensor], bool]:
    """Every file of `paths` decoded by `read_image(path, channels, **options)` in threads, as
    {path: uint8 tensor (C, H, W)}, and whether they were the previous call's (nothing decoded). `files`:
    the data set's fingerprint from its inspection (paths, sizes, modification times). The images are
    shared with that call's data set: datasets must not change them in place (transforms return new
    tensors). Errors: those of `read_image`."""
    global _last
    key = (files, channels, repr(sorted(options.items())))
    if _last is not None and _last[0] == key and all(p in _last[1] for p in paths):
        return _last[1], True
    _last = None  # let the previous data set go before decoding this one
    unique = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        images = dict(
            zip(unique, pool.map(lambda p: read_image(p, channels, **options), unique), strict=True)
        )
    _last = (key, images)
    return images, False
