"""Decoding image files to uint8 tensors (C, H, W), whatever their bit depth and colour mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def image_mode(path: str | Path) -> str:
    """The PIL mode, read from the header only."""
    with Image.open(path) as im:
        return im.mode


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale 16-bit or float images to 0..255 over their full range of the type (not clipped at 255)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        top = 65535 if array.max(initial=0) > 255 or array.dtype.itemsize >= 2 else 255
        return (array.astype(np.float32) * (255.0 / top)).round().clip(0, 255).astype(np.uint8)
    lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
    return ((array - lo) / max(hi - lo, 1e-12) * 255).round().astype(np.uint8)


def read_image(path: str | Path, channels: int) -> torch.Tensor:
    """A uint8 tensor (channels, H, W); grayscale files give 1 channel, or 3 identical ones."""
    with Image.open(path) as im:
        if im.mode in GRAYSCALE_MODES:
            array = _to_uint8(np.asarray(im))
            if array.ndim == 3:  # LA
                array = array[..., 0]
            tensor = torch.from_numpy(np.array(array, copy=True))[None]
            return tensor.expand(channels, -1, -1).contiguous() if channels != 1 else tensor
        rgb = im.convert("RGB")
        tensor = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)
    if channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        return (tensor.float() * weights).sum(0, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    return tensor.contiguous()
