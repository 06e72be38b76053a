"""Which files of a folder are data: the one rule shared by training (folder sources) and prediction.

Archives and file systems leave files that are not data: macOS zips a `__MACOSX/` tree of AppleDouble
`._<name>` files, Finder writes `.DS_Store`, Jupyter `.ipynb_checkpoints/`, Windows `Thumbs.db` and
`desktop.ini`. These, and every hidden file or folder (a name starting with a dot), are ignored. Symlinked
folders are followed, once: a link back to a folder already listed (a loop) is reported and not followed
again. Names that are not valid UTF-8 (possible on Linux) are kept as Python gives them (surrogate escapes,
`os.fsdecode`); `shown_path` makes them printable."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# names the operating system, archivers and notebooks leave in folders (hidden names are ignored anyway)
IGNORED_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini", ".DS_Store", ".ipynb_checkpoints"})


def is_considered(name: str) -> bool:
    """Whether a file or folder name (one path component) is data: not hidden (leading dot, which covers
    AppleDouble `._*` files), not one of IGNORED_NAMES."""
    return bool(name) and not name.startswith(".") and name not in IGNORED_NAMES


def shown_path(path: str | Path) -> str:
    """A path as it can be printed: bytes of a name that are not UTF-8 as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@dataclass
class Walk:
    """The files found under a folder (sorted), and the folders that could not be read, with the error."""

    files: list[str]
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def walk_files(folder: str | Path) -> Walk:
    """Every file below `folder` that `is_considered` (in every path component below it), following
    symlinked folders; a folder reached a second time (a symlink loop, or two links to one folder) is
    logged as a warning and not listed twice. Unreadable folders are returned, not dropped."""
    top = str(folder)
    files: list[str] = []
    unreadable: list[tuple[str, str]] = []
    seen: dict[tuple[int, int], str] = {}
    with contextlib.suppress(OSError):  # an unreadable top folder is reported by os.walk's onerror
        st = os.stat(top)
        seen[(st.st_dev, st.st_ino)] = top

    def on_error(err: OSError) -> None:
        unreadable.append((err.filename or top, err.strerror or str(err)))

    for root, dirs, names in os.walk(top, followlinks=True, onerror=on_error):
        kept = []
        for d in sorted(dirs):
            if not is_considered(d):
                continue
            path = os.path.join(root, d)
            try:
                st = os.stat(path)
            except OSError as err:
                unreadable.append((path, err.strerror or str(err)))
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                log.warning(
                    "%s leads to %s, which is already listed (a symlink loop or a second link to it): "
                    "not followed again.",
                    shown_path(path),
                    shown_path(seen[key]),
                )
                continue
            seen[key] = path
            kept.append(d)
        dirs[:] = kept
        files += [os.path.join(root, n) for n in names if is_considered(n)]
    return Walk(sorted(files), unreadable)
