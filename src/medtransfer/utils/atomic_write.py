"""Writing run files so that a crash or a full disk never leaves half a file: the new content goes to a
temporary file in the same directory, is flushed and fsynced, and then renamed over the old file
(`os.replace`, atomic on POSIX). A failed write leaves the previous file as it was and raises
`RunFileWriteError` naming the file, so status.json can say what failed."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from medtransfer.utils.errors import UserError


class RunFileWriteError(UserError, OSError):
    """A run file or checkpoint could not be written (disk full, no permission, …); the previous version
    of the file, if any, is intact."""


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (the directory entry), where the OS allows opening a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once: os.umask can only be read by setting it


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777  # replacing a file keeps its permissions
    except OSError:
        return 0o666 & ~_UMASK


def _write_error(path: Path, err: OSError) -> RunFileWriteError:
    previous = "the previous version is intact" if path.exists() else "no earlier version existed"
    fix = (
        "free disk space on that drive"
        if err.errno in (errno.ENOSPC, errno.EDQUOT)
        else "check that the folder is writable"
    )
    return RunFileWriteError(
        f"Could not write {path} ({err.__class__.__name__}: {err.strerror or err}); {previous}. "
        f"Fix: {fix}, then run again (an interrupted training run continues with resume=<run dir>)."
    )


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """`open(path, mode)` for writing ("w" or "wb"), but the file appears at `path` only when the block
    ends without error, complete and fsynced. Raises RunFileWriteError (an OSError) when writing fails;
    other exceptions propagate unchanged; in both cases `path` keeps its previous content."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, _mode_for(path))  # mkstemp makes 0600; keep what a plain open() would give
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, RunFileWriteError):
            raise
        raise _write_error(path, err) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> int:
    """Write `data` to `path` atomically; returns the number of bytes written. Raises RunFileWriteError."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return len(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically. Raises RunFileWriteError."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    """`json.dumps(obj)` into `path` atomically (serialised first: a value JSON cannot hold raises
    TypeError before the file is touched). Raises RunFileWriteError."""
    atomic_write_text(path, json.dumps(obj, indent=indent))
