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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError

from medtransfer.data.files.decode import (
    DICOM_EXTENSIONS,
    IMAGE_EXTENSIONS,
    UnsupportedImageError,
    decode,
    is_image_file,
)
from medtransfer.utils.errors import DataError

log = logging.getLogger(__name__)

# bump when what is recorded, or how, changes: cache files of other versions are then not used
INSPECTION_VERSION = 1
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

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass
class Inspection:
    facts: dict[str, FileFacts]
    cache_hit: bool
    seconds: float
    cache_file: Path | None


def _is_gray(array: np.ndarray) -> bool:
    if array.ndim == 2:
        return True
    a = array.astype(np.int16)
    return bool(
        np.abs(a[..., 0] - a[..., 1]).max() <= GRAY_TOLERANCE
        and np.abs(a[..., 0] - a[..., 2]).max() <= GRAY_TOLERANCE
    )


def inspect_file(path: str) -> FileFacts:
    """Read and decode one file in full. Problems come back as reason and fix, except a missing pydicom,
    which is raised (one message for the whole data set)."""
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
        array, mode = decode(path, content=content)
    except DataError:
        raise
    except UnsupportedImageError as err:
        return FileFacts(
            sha1=sha1,
            reason=f"unsupported: {err}",
            fix="export the image as a single 2-D image (PNG, or single-frame DICOM), or remove it",
        )
    except UnidentifiedImageError:
        return FileFacts(
            sha1=sha1,
            reason=f"unreadable: the content is not a {Path(path).suffix} image (no known image format)",
            fix="replace it with the real image, or remove it",
        )
    except Exception as err:
        message = f"{err.__class__.__name__}: {err}"
        reason = (
            f"truncated: the file ends before the image does ({message})"
            if "truncated" in str(err).lower()
            else f"corrupt: {message}"
        )
        return FileFacts(sha1=sha1, reason=reason, fix="copy or export the image again, or remove it")
    return FileFacts(
        sha1=sha1, mode=mode, height=int(array.shape[0]), width=int(array.shape[1]), gray=_is_gray(array)
    )


def fingerprint(paths: list[str]) -> str:
    """A hash of the paths, sizes and modification times: it changes when any file does."""
    digest = hashlib.sha1(f"inspection v{INSPECTION_VERSION}\n".encode())
    for path in sorted(paths):
        try:
            st = os.stat(path)
            digest.update(f"{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\t-\n".encode())
    return digest.hexdigest()


def _read_cache(cache_file: Path, paths: list[str]) -> dict[str, FileFacts] | None:
    try:
        stored = json.loads(cache_file.read_text())["files"]
        return {p: FileFacts(**stored[p]) for p in paths}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(cache_file: Path, facts: dict[str, FileFacts]) -> None:
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(
            json.dumps({"version": INSPECTION_VERSION, "files": {p: asdict(f) for p, f in facts.items()}})
        )
        os.replace(tmp, cache_file)  # atomic: DDP ranks may write the same file
    except OSError as err:
        log.warning(
            "Could not write the inspection cache %s (%s); the next run will inspect the files again.",
            cache_file,
            err,
        )


def inspect_files(paths: list[str], cache_dir: str | Path | None, workers: int | None = None) -> Inspection:
    """Facts for every path, from the cache when the data set is unchanged, else read in `workers` threads."""
    start = time.perf_counter()
    paths = sorted(set(paths))
    cache_file = Path(cache_dir) / "inspection" / f"{fingerprint(paths)}.json" if cache_dir else None
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
            return Inspection(facts, cache_hit=True, seconds=seconds, cache_file=cache_file)
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        facts = dict(zip(paths, pool.map(inspect_file, paths), strict=True))
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
    return Inspection(facts, cache_hit=False, seconds=seconds, cache_file=cache_file)
