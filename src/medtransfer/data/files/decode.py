"""Decoding image files to uint8 tensors (C, H, W), whatever their format, bit depth and colour mode:
JPEG, PNG, BMP, TIFF through Pillow; DICOM through pydicom (the optional extra `medtransfer[dicom]`)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medtransfer.utils.errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
DICOM_MAGIC_OFFSET = 128  # a DICOM file: 128 bytes of preamble, then b"DICM"


class UnsupportedImageError(ValueError):
    """A readable file that holds no single 2-D image (a DICOM report, a multi-frame series)."""


def _has_dicom_magic(head: bytes) -> bool:
    return head[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"


def is_dicom(path: str | Path, head: bytes | None = None) -> bool:
    """By extension, or by the DICM marker (DICOM files often have no extension). `head`: the file's
    first bytes when already read."""
    if Path(path).suffix.lower() in DICOM_EXTENSIONS:
        return True
    if head is None:
        try:
            with open(path, "rb") as f:
                head = f.read(DICOM_MAGIC_OFFSET + 4)
        except OSError:
            return False
    return _has_dicom_magic(head)


def is_image_file(path: str | Path) -> bool:
    """An extension medtransfer decodes, or a DICOM file without extension."""
    suffix = Path(path).suffix.lower()
    return suffix in IMAGE_EXTENSIONS or suffix in DICOM_EXTENSIONS or (suffix == "" and is_dicom(path))


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


def _decode_pil(source) -> tuple[np.ndarray, str]:
    with Image.open(source) as im:
        mode = im.mode
        if mode in GRAYSCALE_MODES:
            array = _to_uint8(np.asarray(im))
            return (array[..., 0] if array.ndim == 3 else array), mode  # LA: drop alpha
        if mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")  # what Pillow asks for before RGB, for palettes with transparency
        return np.asarray(im.convert("RGB")), mode


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise DataError(
            "DICOM files need pydicom, which is not installed: pip install 'medtransfer[dicom]' (or pip install pydicom)."
        ) from None
    return pydicom


def _first(value) -> float | None:
    """The first of a DICOM multi-value (WindowCenter may hold several windows), or None."""
    if value is None or value == "":
        return None
    if isinstance(value, Sequence) and not isinstance(value, str):
        return float(value[0]) if len(value) else None
    return float(value)


def _decode_dicom(source, window: Sequence[float] | None) -> tuple[np.ndarray, str]:
    """Modality LUT (RescaleSlope/Intercept), then a linear window from centre − width/2 to centre + width/2
    (`window` from config, else the file's first WindowCenter/WindowWidth, else the image's min–max);
    MONOCHROME1 (white is low) is inverted so that every image reads dark-is-low."""
    pydicom = _pydicom()
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    ds = pydicom.dcmread(source, force=True)
    if "PixelData" not in ds:
        raise UnsupportedImageError(
            f"no pixel data (a DICOM {ds.get('Modality') or 'non-image'} object, not an image)"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise UnsupportedImageError(f"multi-frame DICOM ({frames} frames): medtransfer reads single images")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    mode = f"DICOM {photometric}"
    pixels = ds.pixel_array  # pydicom converts YBR colour to RGB
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
    if pixels.ndim == 3:
        return _to_uint8(pixels), mode
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    centre, width = window if window else (_first(ds.get("WindowCenter")), _first(ds.get("WindowWidth")))
    if centre is None or width is None or float(width) <= 0:
        lo, hi = float(values.min()), float(values.max())
    else:
        lo, hi = float(centre) - float(width) / 2, float(centre) + float(width) / 2
    array = ((values - lo) / max(hi - lo, 1e-12) * 255).clip(0, 255).round().astype(np.uint8)
    if photometric == "MONOCHROME1":
        array = 255 - array
    return array, mode


def decode(
    path: str | Path, window: Sequence[float] | None = None, content: bytes | None = None
) -> tuple[np.ndarray, str]:
    """The image as uint8 (H, W) for grayscale or (H, W, 3) for colour, and the file's mode (Pillow's
    mode, or "DICOM <photometric interpretation>"). `content`: the file's bytes when already read.
    `window`: [centre, width] for DICOM files, in their rescaled units (e.g. Hounsfield units)."""
    source = io.BytesIO(content) if content is not None else path
    if is_dicom(path, content[: DICOM_MAGIC_OFFSET + 4] if content is not None else None):
        return _decode_dicom(source, window)
    return _decode_pil(source)


def to_channels(array: np.ndarray, channels: int) -> torch.Tensor:
    """A decoded image as a uint8 tensor (channels, H, W): grayscale repeated to 3 channels, or colour
    reduced to luminance for 1 channel."""
    tensor = torch.from_numpy(np.array(array, copy=True))
    if tensor.ndim == 2:
        tensor = tensor[None]
        return tensor.expand(channels, -1, -1).contiguous() if channels != 1 else tensor
    tensor = tensor.permute(2, 0, 1)
    if channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        return (tensor.float() * weights).sum(0, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    return tensor.contiguous()


def read_image(path: str | Path, channels: int, window: Sequence[float] | None = None) -> torch.Tensor:
    """A uint8 tensor (channels, H, W); grayscale files give 1 channel, or 3 identical ones."""
    return to_channels(decode(path, window)[0], channels)
