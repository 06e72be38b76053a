"""Checkpoints are data: every checkpoint medtransfer reads goes through `load_checkpoint_file`, and every
checkpoint the Trainer writes goes through `AtomicCheckpointIO`.

Reading: `torch.load(weights_only=True)` only — tensors and plain containers, never arbitrary Python
objects, so a checkpoint from elsewhere cannot run code. The environment variable
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD (which makes torch.load unpickle anything when a caller leaves
weights_only unset, as Lightning does by default) is cleared for the duration of the load, so no setting
turns the check off. A truncated or corrupt file is named as such, with the last intact checkpoint in the
same folder.

Writing: to a temporary file in the same folder, fsynced and renamed over the old one
(utils/atomic_write.py), so a crash or a full disk leaves the previous checkpoint whole. A checkpoint
without optimizer state (best.ckpt: weights only) is kept in memory until the next checkpoint that can
resume the run (last.ckpt) is written, a checkpoint is read, or the fit ends (teardown, also after an
error): a run that improves every epoch writes its best weights once per last.ckpt, not once per epoch,
and the files on disk always agree (the best.ckpt a last.ckpt names is there before it).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.apply_func import apply_to_collection

from medtransfer.utils.atomic_write import atomic_write_with
from medtransfer.utils.errors import ConfigError

UNSAFE_LOAD_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Within the block, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is unset (restored afterwards), so torch.load
    keeps weights_only=True also where a library leaves it unset."""
    saved = os.environ.pop(UNSAFE_LOAD_ENV, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[UNSAFE_LOAD_ENV] = saved


def checkpoint_damage(path: str | Path) -> str | None:
    """Why the file at `path` is not a whole checkpoint (truncated, corrupt), or None if it looks intact.
    torch.save writes a zip archive: its central directory is at the end (a truncated file has none) and
    every member carries a CRC (a corrupt byte fails it). Reads the whole file."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile as err:
        size = Path(path).stat().st_size
        return f"not a complete archive ({err}; {size} bytes): truncated, or not a torch checkpoint"
    except (OSError, EOFError, RuntimeError) as err:
        return f"unreadable ({err.__class__.__name__}: {err})"
    if bad is not None:
        return f"corrupt (member {bad} fails its checksum)"
    return None


def last_good_checkpoint(directory: str | Path, exclude: str | Path | None = None) -> Path | None:
    """The newest intact *.ckpt in `directory` other than `exclude` (by modification time), or None."""
    exclude = Path(exclude).resolve() if exclude else None
    candidates = [p for p in Path(directory).glob("*.ckpt") if p.resolve() != exclude]
    for candidate in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        if checkpoint_damage(candidate) is None:
            return candidate
    return None


def _damaged_error(path: Path, key: str, why: str) -> ConfigError:
    good = last_good_checkpoint(path.parent, exclude=path)
    if good is None:
        hint = f"No other intact checkpoint is in {path.parent}; train again."
    elif good.name == "best.ckpt":
        hint = (
            f"The last intact checkpoint there is {good}: evaluate or predict with ckpt_path={good}, or "
            f"start a new run from its weights with model.weights={good} (best.ckpt keeps no optimizer "
            f"state, so training cannot continue from it)."
        )
    else:
        hint = f"The last intact checkpoint there is {good}: use {key}={good}."
    return ConfigError(
        f"{key}={path} is damaged: {why} (a crash or a full disk while it was written?). {hint}"
    )


def require_intact(path: str | Path, key: str = "ckpt_path") -> None:
    """Raise ConfigError when the checkpoint at `path` is truncated or corrupt; the message names the last
    intact checkpoint in the same folder (best.ckpt, …) and how to use it."""
    path = Path(path)
    why = checkpoint_damage(path)
    if why is not None:
        raise _damaged_error(path, key, why)


@contextlib.contextmanager
def safe_checkpoint_loading(path: str | Path, key: str = "ckpt_path") -> Iterator[Path]:
    """Around any call that loads the checkpoint at `path` with weights_only=True (torch.load, Lightning's
    load_from_checkpoint): checks first that the file exists and is intact, keeps
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD out of the way, and turns torch's refusal of pickled objects into a
    ConfigError. Yields the path. `key` names the setting the path came from, for the messages."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"{key}={path}: no such file. Give a checkpoint such as <run dir>/checkpoints/best.ckpt."
        )
    if zipfile.is_zipfile(path) or path.suffix == ".ckpt":
        require_intact(path, key)
    try:
        with weights_only_loading():
            yield path
    except pickle.UnpicklingError as err:
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(err).splitlines()]
        # the line that names what was refused (torch's first lines are advice on unsafe loading)
        first_line = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else "")
        raise ConfigError(
            f"{key}={path} holds Python objects, not only weights and plain data, and was refused "
            f"(checkpoints are loaded with weights_only=True; nothing in it was run). torch says: "
            f"{first_line[:300]}. Use a checkpoint written by medtransfer, or a plain state dict "
            f"(torch.save(model.state_dict(), PATH))."
        ) from None
    except (RuntimeError, EOFError) as err:
        if isinstance(err, RuntimeError) and "PytorchStreamReader" not in str(err):
            raise
        # a legacy (non-zip) file cut short, or damage the zip check missed
        raise _damaged_error(path, key, f"{err.__class__.__name__}: {str(err)[:200]}") from None


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu", key: str = "ckpt_path") -> Any:
    """The content of a checkpoint or state-dict file, loaded with weights_only=True whatever the
    environment says. `key` names the setting the path came from, for the messages.

    Raises ConfigError when the file is missing, damaged (truncated or corrupt; the message names the last
    intact checkpoint in the same folder) or holds Python objects other than tensors and plain data (which
    are refused, never executed)."""
    with safe_checkpoint_loading(path, key) as checked:
        return torch.load(checked, map_location=map_location, weights_only=True)


def cpu_copy(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A copy of every tensor of `checkpoint` on the CPU, tensors that view the same memory copied once and
    still sharing it (a module registered twice, as a classifier's `explanation_layer`, is then saved once,
    as torch.save saves the originals)."""
    copies: dict[tuple, torch.Tensor] = {}

    def copy(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage().data_ptr()
        key = (storage, tensor.storage_offset(), tensor.shape, tensor.stride(), tensor.dtype, tensor.device)
        if key not in copies:
            copies[key] = tensor.detach().cpu().clone()
        return copies[key]

    return apply_to_collection(checkpoint, torch.Tensor, copy)


class AtomicCheckpointIO(TorchCheckpointIO):
    """The Trainer's checkpoint reader and writer (`Trainer(plugins=[AtomicCheckpointIO()])`).

    save: atomic (temporary file in the same folder, fsync, rename); a failed write raises
    RunFileWriteError naming the file and leaves the previous checkpoint intact. A weights-only checkpoint
    is held (a copy on the CPU) until `flush`: before any other write or read, and at teardown. `writes`
    records (path, bytes) of every checkpoint written, for benchmarks and tests.
    load: `load_checkpoint_file` — always weights_only=True (a request for weights_only=False is not
    honoured), damaged files and pickled objects are ConfigErrors."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, int]] = []
        self.held: dict[str, dict[str, Any]] = {}  # path -> weights-only checkpoint not written yet

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{self.__class__.__name__} takes no storage_options")
        if "optimizer_states" not in checkpoint:  # cannot resume a run: written with the next one that can
            self.held[str(path)] = cpu_copy(checkpoint)
            return
        self.flush()
        self._write(checkpoint, path)

    def _write(self, checkpoint: dict[str, Any], path) -> None:
        size = atomic_write_with(path, lambda f: torch.save(checkpoint, f))  # no copy in memory first
        self.writes.append((str(path), size))

    def flush(self) -> None:
        """Write the held checkpoints."""
        while self.held:
            path, checkpoint = self.held.popitem()
            self._write(checkpoint, path)

    def update_held(self, path, **entries) -> bool:
        """Store `entries` in the medtransfer section of the checkpoint held for `path`, if one is held (it is
        written with them); False when none is (the file is already written: models/checkpoint.py
        `add_to_checkpoint` rewrites it)."""
        held = self.held.get(str(path))
        if held is None:
            return False
        held.setdefault("medtransfer", {}).update(entries)
        return True

    def remove_checkpoint(self, path) -> None:
        self.held.pop(str(path), None)
        super().remove_checkpoint(path)

    def teardown(self) -> None:
        self.flush()

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        self.flush()
        return load_checkpoint_file(path, map_location=map_location or "cpu", key="ckpt_path")
