"""Where the configs live, and run-directory helpers."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

# the configs ship in the package (medtransfer/conf), so `pip install .` runs every command; a fork can
# point elsewhere with MEDTRANSFER_CONFIG_DIR.
CONFIG_DIR = Path(os.environ.get("MEDTRANSFER_CONFIG_DIR", Path(__file__).resolve().parents[1] / "conf"))

PATH_KEYS = ("root", "path", "manifest", "download_dir", "cache_dir")


def absolute_paths(data_config: Mapping) -> dict:
    """The data config with its file and folder paths made absolute, so that a checkpoint can find its
    data again from any working directory."""
    out = dict(data_config)
    for key in PATH_KEYS:
        if isinstance(out.get(key), str) and out[key]:
            out[key] = str(Path(out[key]).expanduser().resolve())
    return out
