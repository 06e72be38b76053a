"""Decoding image files to uint8 tensors (C, H, W), whatever their format, bit depth and colour mode:
JPEG, PNG, BMP, TIFF through Pillow; DICOM through pydicom (the optional extra `medtransfer[dicom]`)."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from medtransfer.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "I;16S", "F"})
INTEGER_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "I;16S"})
DICOM_MAGIC_OFFSET = 128  # a DICOM file: 128 bytes of preamble, then b"DICM"
# DICOM files declaring more pixels (rows × columns × frames) are refused before decoding, as Pillow
# refuses images over Image.MAX_IMAGE_PIXELS (decompression bombs); None: no limit
MAX_DICOM_PIXELS: int | None = Image.MAX_IMAGE_PIXELS
DECODER_INSTALL = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"


class UnsupportedImageError(ValueError):
    """A readable file that holds no single 2-D image (a DICOM report, a multi-frame series)."""


class MissingDecoderError(UnsupportedImageError):
    """A compressed DICOM file whose transfer syntax needs a decoder plugin that is not installed."""


class ImageTooLargeError(UnsupportedImageError):
    """A file declaring more pixels than the limit (MAX_DICOM_PIXELS, Pillow's MAX_IMAGE_PIXELS)."""


@dataclass(frozen=True)
class Decoded:
    """A decoded image: uint8 (H, W) or (H, W, 3); the file's mode; for grayscale with more than 8 bits
    (and DICOM) the (min, max) of its values in the file's units before conversion, else None."""

    array: np.ndarray
    mode: str
    value_range: tuple[float, float] | None = None


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
    return head[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"


def is_image_file(path: str | Path) -> bool:
    """An extension medtransfer decodes, or a DICOM file without extension."""
    suffix = Path(path).suffix.lower()
    return suffix in IMAGE_EXTENSIONS or suffix in DICOM_EXTENSIONS or (suffix == "" and is_dicom(path))


def resolve_window(
    window: Sequence[float] | None, dicom_window: Sequence[float] | None = None
) -> list[float] | None:
    """The intensity window [centre, width] of the config, checked: `data.window`, or its former name
    `data.dicom_window` (which now applies to every image with more than 8 bits, like `data.window`).
    Raises ConfigError for anything but two numbers with width > 0, or for both keys set differently."""
    if window is not None and dicom_window is not None and list(window) != list(dicom_window):
        raise ConfigError(
            f"data.window={list(window)} and data.dicom_window={list(dicom_window)} differ; "
            "data.dicom_window is the former name of data.window: set only data.window."
        )
    key, value = ("window", window) if window is not None else ("dicom_window", dicom_window)
    if value is None:
        return None
    try:
        centre, width = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"data.{key}={value!r}: give [centre, width] in the files' units, e.g. data.window=[40,400] "
            "for Hounsfield units, or null."
        ) from None
    if width <= 0:
        raise ConfigError(f"data.{key}={list(value)}: the width must be > 0, e.g. data.window=[40,400].")
    if key == "dicom_window":
        log.warning("data.dicom_window is now called data.window (and applies to every >8-bit image).")
    return [centre, width]


def window_from_config(data_config) -> list[float] | None:
    """The window of a data config (a mapping, e.g. the one a checkpoint carries), None if it has none."""
    data_config = data_config or {}
    return resolve_window(data_config.get("window"), data_config.get("dicom_window"))


def apply_window(values: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Values in the file's units to uint8: centre − width/2 → 0, centre + width/2 → 255, linear between,
    clipped outside (what a viewer's window does)."""
    centre, width = float(window[0]), float(window[1])
    return _scale(values, centre - width / 2, centre + width / 2)


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """lo → 0, hi → 255, linear, clipped; NaN → 0."""
    scaled = (values.astype(np.float64) - lo) * (255.0 / max(hi - lo, 1e-12))
    return np.nan_to_num(scaled, nan=0.0).clip(0, 255).round().astype(np.uint8)


def _integer_range(im: Image.Image, array: np.ndarray) -> tuple[float, float]:
    """The range of values a Pillow integer image's storage can hold: 16-bit unsigned 0..65535, 16-bit
    signed −32768..32767 (TIFF SampleFormat 2, read by Pillow as mode I), else the array type's range.
    `im`: the image as opened (its TIFF tags)."""
    if im.mode.startswith("I;16"):
        return (-32768.0, 32767.0) if im.mode.endswith("S") else (0.0, 65535.0)
    tags = getattr(im, "tag_v2", None)
    if tags is not None and 258 in tags:  # a TIFF: its bits per sample and sample format (2: signed)
        bits = tags[258][0] if isinstance(tags[258], tuple) else tags[258]
        fmt = tags.get(339, (1,))
        signed = (fmt[0] if isinstance(fmt, tuple) else fmt) == 2
        if isinstance(bits, int) and 8 < bits < 32:
            return (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1) if signed else (0.0, 2.0**bits - 1)
    info = np.iinfo(array.dtype)
    return float(info.min), float(info.max)


def _decode_pil(source, window: Sequence[float] | None) -> Decoded:
    """Pillow, with the EXIF orientation applied (pixels as every viewer shows them)."""
    with Image.open(source) as opened:
        im = ImageOps.exif_transpose(opened)
        storage = _integer_range(opened, np.zeros(1, np.int32)) if opened.mode in INTEGER_MODES else None
    mode = im.mode
    if mode == "1":
        return Decoded(np.asarray(im).astype(np.uint8) * 255, mode)
    if mode in GRAYSCALE_MODES:
        array = np.asarray(im)
        array = array[..., 0] if array.ndim == 3 else array  # LA: drop alpha
        if array.dtype == np.uint8:
            return Decoded(array, mode)
        value_range = (float(np.nanmin(array)), float(np.nanmax(array)))
        if window is not None:
            return Decoded(apply_window(array, window), mode, value_range)
        if np.issubdtype(array.dtype, np.integer):  # the storage's range: the same scale for every file
            return Decoded(_scale(array, *(storage or _integer_range(im, array))), mode, value_range)
        return Decoded(_scale(array, *value_range), mode, value_range)  # float: its own min-max
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # what Pillow asks for before RGB, for palettes with transparency
    return Decoded(np.asarray(im.convert("RGB")), mode)


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise DataError(
            "DICOM files need pydicom, which is not installed: pip install 'medtransfer[dicom]' (or pip install pydicom)."
        ) from None
    return pydicom


def _pixel_array(ds, syntax) -> np.ndarray:
    """ds.pixel_array; a compressed file that pydicom cannot decode because a decoder plugin is missing
    raises MissingDecoderError."""
    try:
        return ds.pixel_array  # pydicom converts YBR colour to RGB
    except Exception as err:
        if syntax is None or not syntax.is_compressed:
            raise
        from pydicom.pixels import get_decoder

        try:
            missing = get_decoder(syntax).missing_dependencies
        except (NotImplementedError, ValueError):  # no decoder at all for this transfer syntax
            missing = ["none known to pydicom"]
        if not missing:  # every plugin for it is installed: the data itself is bad
            raise
        plugins = ", ".join(m.split(" - ")[0].strip() for m in missing)
        raise MissingDecoderError(
            f"needs a decoder plugin: its pixel data is compressed as {syntax.name} ({syntax}), which the "
            f"installed decoders cannot read (not installed: {plugins})"
        ) from err


def _voi_range(ds) -> tuple[float, float]:
    """The output range of pydicom's apply_voi_lut for this file: the VOI LUT's values, or the windowing
    function's limits (evaluated far below and above the window)."""
    from pydicom.pixels import apply_voi_lut

    lut = ds.get("VOILUTSequence")
    if lut and lut[0].get("LUTData") is not None and lut[0].get("LUTDescriptor") is not None:
        data = np.asarray(lut[0].LUTData, dtype=np.float64)
        return float(data.min()), float(data.max())
    with np.errstate(over="ignore"):
        ends = apply_voi_lut(np.array([-1e15, 1e15]), ds)
    return float(min(ends)), float(max(ends))


def _decode_dicom(source, window: Sequence[float] | None) -> Decoded:
    """pydicom's own LUT functions: the modality LUT (Modality LUT Sequence or RescaleSlope/Intercept),
    then `window` (linear, centre ± width/2, in the modality units) when given, else the file's VOI LUT
    (VOI LUT Sequence, or WindowCenter/WindowWidth with its VOILUTFunction, first of several), else the
    image's min–max. MONOCHROME1 (white is low) is inverted so that every image reads dark-is-low."""
    pydicom = _pydicom()
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(source, force=True)
    if "PixelData" not in ds:
        raise UnsupportedImageError(
            f"no pixel data (a DICOM {ds.get('Modality') or 'non-image'} object, not an image)"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    pixels = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * frames
    if MAX_DICOM_PIXELS is not None and pixels > MAX_DICOM_PIXELS:
        raise ImageTooLargeError(
            f"declares {ds.get('Rows')} × {ds.get('Columns')} pixels × {frames} frame(s) = {pixels} pixels, "
            f"more than the limit of {MAX_DICOM_PIXELS} (medtransfer.data.files.decode.MAX_DICOM_PIXELS, "
            "Pillow's MAX_IMAGE_PIXELS); not decoded"
        )
    if frames > 1:
        raise UnsupportedImageError(f"multi-frame DICOM ({frames} frames): medtransfer reads single images")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    mode = f"DICOM {photometric}"
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    array = _pixel_array(ds, syntax)
    if photometric == "PALETTE COLOR":
        array = apply_color_lut(array, ds)
    if array.ndim == 3:  # colour: 8 bits as they are, 16 over the full range
        if array.dtype != np.uint8:
            array = _scale(array, 0, np.iinfo(array.dtype).max if array.dtype.kind in "ui" else 1)
        return Decoded(array, mode)
    values = apply_modality_lut(array, ds)
    value_range = (float(values.min()), float(values.max()))
    if window is not None:
        out = apply_window(values, window)
    else:
        try:
            shown = apply_voi_lut(values, ds)
            lo, hi = _voi_range(ds) if shown is not values else value_range
        except ValueError as err:  # a window pydicom refuses (width < 1, unknown function)
            log.warning("%s: the file's window is not usable (%s); its min-max is used instead.", source, err)
            shown, (lo, hi) = values, value_range
        out = _scale(shown, lo, hi)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return Decoded(out, mode, value_range)


def decode_details(
    path: str | Path, window: Sequence[float] | None = None, content: bytes | None = None
) -> Decoded:
    """Like `decode`, with the value range of the file before conversion to 8 bits (for images with
    more than 8 bits and DICOM)."""
    source = io.BytesIO(content) if content is not None else path
    if is_dicom(path, content[: DICOM_MAGIC_OFFSET + 4] if content is not None else None):
        return _decode_dicom(source, window)
    return _decode_pil(source, window)


def decode(
    path: str | Path, window: Sequence[float] | None = None, content: bytes | None = None
) -> tuple[np.ndarray, str]:
    """The image as uint8 (H, W) for grayscale or (H, W, 3) for colour, and the file's mode (Pillow's
    mode, or "DICOM <photometric interpretation>"). `content`: the file's bytes when already read.

    Pixels are as a viewer shows them: the EXIF orientation is applied. Grayscale with more than 8 bits
    (16-bit, signed, 32-bit integer; DICOM after its modality LUT) goes through `window` = [centre, width]
    in the file's units (e.g. Hounsfield units) when given. Without one: DICOM through the file's own VOI
    LUT or window, else its min–max; other integer images over the whole range their storage holds (0..65535
    for 16-bit, −32768..32767 for signed 16-bit: negatives are kept, not clipped); float images over their
    own min–max. 8-bit and colour images are used as they are.

    Raises UnsupportedImageError (no single 2-D image), MissingDecoderError (a DICOM compression without
    its decoder plugin), ImageTooLargeError (over the pixel limit), DataError (pydicom missing), and
    Pillow's or pydicom's own errors for unreadable files."""
    decoded = decode_details(path, window, content)
    return decoded.array, decoded.mode


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
    """A uint8 tensor (channels, H, W); grayscale files give 1 channel, or 3 identical ones. `window`:
    see `decode`."""
    return to_channels(decode(path, window)[0], channels)
