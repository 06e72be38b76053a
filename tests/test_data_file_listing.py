"""Files as archives and file systems leave them: macOS zip debris, hidden files and notebook checkpoints
ignored; symlinked folders followed (a loop reported, not followed forever); file names that are not
valid UTF-8 trained on and written out; the same image under two labels reported."""

from __future__ import annotations

import csv
import logging
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_folder_tree
from medtransfer.data.files.listing import is_considered, shown_path, walk_files
from medtransfer.data.sources.folder import FolderDataModule
from medtransfer.utils.errors import DataError

APPLEDOUBLE = struct.pack(">II16sH", 0x00051607, 0x00020000, b"Mac OS X        ", 0) + b"\x00" * 60


def add_debris(root: Path) -> None:
    """What a macOS zip unpacked elsewhere, Finder and Jupyter leave in an image folder."""
    for cls in ("benign", "malignant"):
        (root / "__MACOSX" / cls).mkdir(parents=True)
        (root / "__MACOSX" / cls / f"._{cls}_0.png").write_bytes(APPLEDOUBLE)
        (root / cls / f"._{cls}_1.png").write_bytes(APPLEDOUBLE)
        (root / cls / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 40)
    (root / ".ipynb_checkpoints").mkdir()
    (root / "benign" / ".ipynb_checkpoints").mkdir()
    (root / "benign" / ".ipynb_checkpoints" / "x-checkpoint.png").write_bytes(b"not an image")


def test_the_one_rule_for_what_is_data():
    for name in ("__MACOSX", "._scan.png", ".DS_Store", ".ipynb_checkpoints", ".hidden", "Thumbs.db"):
        assert not is_considered(name), name
    assert is_considered("scan.png") and is_considered("MACOSX_notes")


def test_archive_debris_is_ignored_in_training(tmp_path):
    root = make_folder_tree(tmp_path / "images", per_class=6, size=16)
    add_debris(root)
    datamodule = FolderDataModule(root=str(root), cache="none")
    datamodule.setup()
    assert datamodule.classes == ["benign", "malignant"]
    assert sum(datamodule.summary()["totals"].values()) == 12 and datamodule.data.skipped == []


def test_symlinked_folders_are_followed_and_a_loop_is_reported(tmp_path, caplog):
    root = make_folder_tree(tmp_path / "images", per_class=4, size=16)
    elsewhere = make_folder_tree(tmp_path / "more", per_class=2, size=16, classes=("malignant",), seed=1)
    os.symlink(elsewhere / "malignant", root / "malignant" / "linked")
    os.symlink(root / "benign", root / "benign" / "loop")  # leads back to its own folder
    with caplog.at_level(logging.WARNING):
        files = walk_files(root / "malignant").files + walk_files(root / "benign").files
    assert len(files) == 4 + 2 + 4
    assert sum(f"{os.sep}linked{os.sep}" in f for f in files) == 2
    assert "loop leads to" in caplog.text and "not followed again" in caplog.text


@pytest.mark.skipif(sys.platform != "linux", reason="file names as bytes: Linux file systems")
def test_file_names_that_are_not_utf8_are_trained_on_and_written(tmp_path):
    root = make_folder_tree(tmp_path / "images", per_class=6, size=16)
    image = np.random.default_rng(0).integers(0, 255, (16, 16), dtype=np.uint8)
    raw = os.fsencode(root / "benign") + b"/caf\xe9.png"  # a Latin-1 name, as old Windows zips leave them
    with open(raw, "wb") as f:
        Image.fromarray(image).save(f, format="PNG")
    name = os.fsdecode(raw)
    datamodule = FolderDataModule(
        root=str(root), image_size=16, num_workers=0, cache="none", cache_dir=str(tmp_path / "cache")
    )
    datamodule.setup()
    assert name in [p for s in datamodule.data.splits.values() for p in s.paths]
    split = next(s for s, part in datamodule.data.splits.items() if name in part.paths)
    assert len(list(datamodule.dataloader(split))) >= 1  # decoded from its bytes name
    assert datamodule.write_splits_csv(tmp_path / "splits.csv")
    with open(tmp_path / "splits.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        assert name in [row["path"] for row in csv.DictReader(f)]  # the exact bytes of the name
    again = FolderDataModule(root=str(root), cache="none", cache_dir=str(tmp_path / "cache"))
    again.setup()
    assert again.inspection.cache_hit
    assert shown_path(name).endswith("caf\\xe9.png")


def test_the_same_image_under_two_labels_is_reported(tmp_path):
    root = make_folder_tree(tmp_path / "images", per_class=6, size=16)
    (root / "malignant" / "copy.png").write_bytes((root / "benign" / "benign_1.png").read_bytes())
    with pytest.raises(DataError) as err:
        FolderDataModule(root=str(root), cache="none").setup()
    message = str(err.value)
    assert (
        f"{root / 'malignant' / 'copy.png'}: the same image (content hash) is labelled 'malignant'" in message
    )
    assert f"'benign' at {root / 'benign' / 'benign_1.png'}" in message
