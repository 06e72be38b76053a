"""The data summary (Rich table at start, data_summary.json) on the real brain MRI folder: classes,
counts, mixed sizes, and a second run that reuses the validation (cache hit)."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import pytest

from medtransfer.data.sources.folder import FolderDataModule
from medtransfer.data.splits import SPLITS
from medtransfer.utils.console import console, print_data_summary

BRAIN_MRI = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain_mri"
log = logging.getLogger(__name__)

pytestmark = pytest.mark.skipif(not BRAIN_MRI.is_dir(), reason=f"{BRAIN_MRI} is not on this machine")


def brain_mri(cache_dir: Path) -> tuple[FolderDataModule, float]:
    start = time.perf_counter()
    datamodule = FolderDataModule(root=str(BRAIN_MRI), cache="none", cache_dir=str(cache_dir))
    datamodule.setup()
    return datamodule, time.perf_counter() - start


def test_brain_mri_summary_and_cached_second_run(tmp_path):
    datamodule, first_s = brain_mri(tmp_path)
    summary = datamodule.summary()
    assert summary["classes"] == ["no", "yes"]
    assert summary["class_totals"] == {"no": 98, "yes": 156}
    sizes = summary["original_sizes"]
    assert sizes["height"][0] < sizes["height"][1] and sizes["width"][0] < sizes["width"][1]  # mixed sizes
    assert summary["channels"] == 1 and sum(summary["channel_modes"].values()) == 254
    assert summary["skipped_files"] == 0

    # the folder holds byte-identical copies (e.g. yes/Y15.jpg, Y34.jpg and Y181.jpg): each set stays in one split
    split_of_hash: dict[str, set[str]] = {}
    for split in SPLITS:
        for path in datamodule.data.splits[split].paths:
            split_of_hash.setdefault(hashlib.sha1(Path(path).read_bytes()).hexdigest(), set()).add(split)
    assert len(split_of_hash) < 254 and all(len(s) == 1 for s in split_of_hash.values())

    again, second_s = brain_mri(tmp_path)
    log.info(
        "brain_mri setup: first run %.3f s (validated), second run %.3f s (cache hit)", first_s, second_s
    )
    assert not datamodule.inspection.cache_hit and again.inspection.cache_hit
    assert again.summary() == summary

    with console.capture() as captured:
        print_data_summary(summary)
    table = captured.get()
    assert "class weight" in table and f"height {sizes['height'][0]}–{sizes['height'][1]}" in table
