"""Inspecting every file of a data set once: is it readable and complete (decoded in full), its content
hash, size, mode and whether it is gray. Files are inspected in a thread pool (decoding and hashing release
the GIL); the results are cached in a JSON file named by the data set's fingerprint (paths, sizes,
modification times), so a second run on an unchanged data set reads no image."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medtransfer.data.files.decode import (
    DECODER_INSTALL,
    DICOM_EXTENSIONS,
    IMAGE_EXTENSIONS,
    ImageTooLargeError,
    MissingDecoderError,
    UnsupportedImageError,
    decode_details,
    is_image_file,
)
from medtransfer.data.files.listing import shown_path
from medtransfer.utils.atomic_write import atomic_write_json
from medtransfer.utils.errors import DataError

log = logging.getLogger(__name__)

# bump when what is recorded, or how, changes: cache files of other versions are then not used
INSPECTION_VERSION = 2
# colour files whose channels differ by at most this much are gray (JPEG rounding can differ by 1)
GRAY_TOLERANCE = 2
KNOWN_EXTENSIONS = " ".join(sorted(IMAGE_EXTENSIONS | DICOM_EXTENSIONS))


@dataclass(frozen=True)
class FileFacts:
    """What inspection learned about one file: either `reason` and `fix` (it cannot be used) or the rest."""

    sha1: str | None = None
    mode: str | None = None
    height: int = 0
    width: int = 0
    gray: bool = True
    reason: str | None = None
    fix: str | None = None
    levels: int = 256  # distinct grey values after conversion to 8 bits (gray images; colour: 256)
    value_range: tuple[float, float] | None = None  # (min, max) in the file's units, >8-bit and DICOM

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass
class Inspection:
    facts: dict[str, FileFacts]
    cache_hit: bool
    seconds: float
    cache_file: Path | None
    fingerprint: str  # of the inspected files: see `fingerprint`


def _is_gray(array: np.ndarray) -> bool:
    if array.ndim == 2:
        return True
    a = array.astype(np.int16)
    return bool(np.abs(a - a[..., :1]).max() <= GRAY_TOLERANCE)  # every channel against the first


def _grey_levels(array: np.ndarray) -> int:
    """Distinct values of a gray uint8 image (first channel of a gray colour file); O(pixels)."""
    return int(np.count_nonzero(np.bincount((array if array.ndim == 2 else array[..., 0]).ravel())))


def inspect_file(path: str, window: Sequence[float] | None = None) -> FileFacts:
    """Read and decode one file in full (with `window`, as training will). Problems come back as reason
    and fix, except a missing pydicom, which is raised (one message for the whole data set)."""
    if not is_image_file(path):
        suffix = Path(path).suffix or "no extension"
        return FileFacts(
            reason=f"not an image file ({suffix}; medtransfer reads {KNOWN_EXTENSIONS} and DICOM)",
            fix="remove it from the data set, or convert it to one of these formats",
        )
    try:
        content = Path(path).read_bytes()
    except OSError as err:
        return FileFacts(
            reason=f"unreadable: {err.strerror or err}",
            fix="check that the file exists and that you may read it",
        )
    if not content:
        return FileFacts(
            reason="unreadable: empty file (0 bytes)", fix="copy or export the image again, or remove it"
        )
    sha1 = hashlib.sha1(content).hexdigest()
    try:
        decoded = decode_details(path, window, content=content)
    except DataError:
        raise
    except MissingDecoderError as err:
        reason = str(err)
        fix = f'install the DICOM decoders: {DECODER_INSTALL} (or python -m pip install -e ".[dicom]")'
    except (ImageTooLargeError, Image.DecompressionBombError) as err:
        reason = f"too large: {err}"
        fix = (
            "check the file (a header declaring more pixels than it holds is a decompression bomb); "
            "if the image is genuine, downsample it, or raise the limit"
        )
    except UnsupportedImageError as err:
        reason = f"unsupported: {err}"
        fix = "export the image as a single 2-D image (PNG, or single-frame DICOM), or remove it"
    except UnidentifiedImageError:
        reason = f"unreadable: the content is not a {Path(path).suffix} image (no known image format)"
        fix = "replace it with the real image, or remove it"
    except Exception as err:
        message = f"{err.__class__.__name__}: {err}"
        reason = (
            f"truncated: the file ends before the image does ({message})"
            if "truncated" in str(err).lower()
            else f"corrupt: {message}"
        )
        fix = "copy or export the image again, or remove it"
    else:
        array = decoded.array
        gray = _is_gray(array)
        return FileFacts(
            sha1=sha1,
            mode=decoded.mode,
            height=int(array.shape[0]),
            width=int(array.shape[1]),
            gray=gray,
            levels=_grey_levels(array) if gray else 256,
            value_range=decoded.value_range,
        )
    return FileFacts(sha1=sha1, reason=reason, fix=fix)


def fingerprint(paths: list[str], window: Sequence[float] | None = None) -> str:
    """A hash of the paths, sizes and modification times (and the window, which changes the grey levels):
    it changes when any file does. Paths that are not valid UTF-8 are hashed as their bytes."""
    digest = hashlib.sha1(f"inspection v{INSPECTION_VERSION} window={window}\n".encode())
    for path in sorted(paths):
        try:
            st = os.stat(path)
            digest.update(os.fsencode(path) + f"\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(os.fsencode(path) + b"\t-\n")
    return digest.hexdigest()


def _read_cache(cache_file: Path, paths: list[str]) -> dict[str, FileFacts] | None:
    try:
        stored = json.loads(cache_file.read_text())["files"]
        facts = {p: FileFacts(**stored[p]) for p in paths}
        return {
            p: replace(f, value_range=tuple(f.value_range)) if f.value_range else f for p, f in facts.items()
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(cache_file: Path, facts: dict[str, FileFacts]) -> None:
    try:  # atomic: DDP ranks may write the same file
        atomic_write_json(
            cache_file,
            {"version": INSPECTION_VERSION, "files": {p: asdict(f) for p, f in facts.items()}},
            indent=None,
        )
    except OSError as err:
        log.warning(
            "Could not write the inspection cache %s (%s); the next run will inspect the files again.",
            cache_file,
            err,
        )


def inspect_files(
    paths: list[str],
    cache_dir: str | Path | None,
    workers: int | None = None,
    window: Sequence[float] | None = None,
) -> Inspection:
    """Facts for every path, from the cache when the data set is unchanged, else read in `workers` threads.
    `window`: the intensity window training decodes with (see `decode`)."""
    start = time.perf_counter()
    paths = sorted(set(paths))
    files = fingerprint(paths, window)
    cache_file = Path(cache_dir) / "inspection" / f"{files}.json" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        facts = _read_cache(cache_file, paths)
        if facts is not None:
            seconds = time.perf_counter() - start
            log.info(
                "Validation cache hit: %d files unchanged, nothing read (%.3f s, %s)",
                len(paths),
                seconds,
                cache_file,
            )
            return Inspection(
                facts, cache_hit=True, seconds=seconds, cache_file=cache_file, fingerprint=files
            )
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        facts = dict(zip(paths, pool.map(partial(inspect_file, window=window), paths), strict=True))
    if cache_file is not None:
        _write_cache(cache_file, facts)
    seconds = time.perf_counter() - start
    log.info(
        "Validated %d files in %.2f s (%d threads)%s",
        len(paths),
        seconds,
        workers,
        f", cached in {cache_file}" if cache_file else "",
    )
    return Inspection(facts, cache_hit=False, seconds=seconds, cache_file=cache_file, fingerprint=files)


# fewer distinct grey values than this after conversion to 8 bits: the intensities are squeezed together
FEW_LEVELS = 8


def few_levels_message(facts: Mapping[str, FileFacts], window: Sequence[float] | None = None) -> str | None:
    """A warning when decoded gray images use fewer than FEW_LEVELS grey values (e.g. CT in Hounsfield
    units over the whole 16-bit range: 2-3 values), naming how many files, one example, the values they
    hold in the file's units and the fix (data.window=[centre,width]); None when no file does."""
    few = {p: f for p, f in facts.items() if f.ok and f.gray and f.levels < FEW_LEVELS}
    if not few:
        return None
    example, fact = next(iter(sorted(few.items())))
    ranges = [f.value_range for f in few.values() if f.value_range]
    head = (
        f"{len(few)} of {sum(f.ok for f in facts.values())} image file(s) use fewer than {FEW_LEVELS} grey levels "
        f"after conversion to 8 bits (e.g. {shown_path(example)}: {fact.levels})"
    )
    if not ranges:
        return f"{head}; the files themselves hold so few values: check how they were exported."
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    now = f"data.window={list(window)}" if window else "no window (the storage's whole range)"
    return (
        f"{head}: their values span {lo:g}..{hi:g} in the files' units and {now} squeezes them together, "
        f"so a model cannot tell those intensities apart. Set data.window=[centre,width] in those units: "
        f"data.window=[{(lo + hi) / 2:g},{hi - lo:g}] for the whole range, or a clinical window "
        "(CT in HU: brain [40,80], soft tissue [40,400], lung [-600,1500])."
    )
