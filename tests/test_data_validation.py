"""Every bad input is found before training, named with its file, reason and fix: data.on_bad=error stops
with all of them at once; data.on_bad=skip trains on the rest and lists the files in skipped.csv."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest

from conftest import make_folder_tree, write_corrupt_png, write_truncated_png
from medtransfer.data.splits import SPLITS
from medtransfer.models.classifier import Classifier
from medtransfer.train import train
from medtransfer.utils.errors import DataError


def single_tree(tmp: Path) -> Path:
    return make_folder_tree(tmp / "images", per_class=6, size=16)


def presplit_tree(tmp: Path) -> Path:
    root = tmp / "presplit"
    for seed, split in enumerate(SPLITS):
        make_folder_tree(root / split, per_class=4, size=16, seed=seed)
    return root


def write_manifest(root: Path, extra_rows: list[tuple[str, str]]) -> Path:
    """A manifest of every image under `root` (path relative to it, label = class folder), then `extra_rows`."""
    rows = [(str(p.relative_to(root)), p.parent.name) for p in sorted(root.glob("*/*"))] + extra_rows
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    return manifest


def folder(root: Path) -> list[str]:
    return ["data=folder", f"data.root={root}"]


# Each case builds a data set with one bad input: (data overrides, the first line of its problem).
def truncated(tmp):
    root = single_tree(tmp)
    bad = write_truncated_png(root / "benign" / "cut.png")
    return folder(
        root
    ), f"{bad}: truncated: the file ends before the image does (OSError: image file is truncated)"


def corrupt(tmp):
    root = single_tree(tmp)
    bad = write_corrupt_png(root / "malignant" / "damaged.png")
    return folder(root), f"{bad}: corrupt: OSError: broken data stream when reading image file"


def unreadable(tmp):
    root = single_tree(tmp)
    bad = root / "benign" / "scan.jpg"
    bad.write_text("<html>404 Not Found</html>")
    return folder(root), f"{bad}: unreadable: the content is not a .jpg image (no known image format)"


def empty_file(tmp):
    root = single_tree(tmp)
    bad = root / "benign" / "zero.png"
    bad.touch()
    return folder(root), f"{bad}: unreadable: empty file (0 bytes)"


def not_an_image(tmp):
    root = single_tree(tmp)
    bad = root / "malignant" / "notes.txt"
    bad.write_text("patient 7: re-scan")
    return (
        folder(root),
        f"{bad}: not an image file (.txt; medtransfer reads .bmp .dcm .dicom .jpeg .jpg .png .tif .tiff and DICOM)",
    )


def empty_class_folder(tmp):
    root = single_tree(tmp)
    (root / "cyst").mkdir()
    return folder(root), f"{root / 'cyst'}: empty class folder: no files in it"


def class_sets_differ(tmp):
    root = presplit_tree(tmp)
    shutil.rmtree(root / "val" / "malignant")
    return (
        folder(root),
        f"{root / 'val' / 'malignant'}: no images of class 'malignant' in the val split (train has 4, test has 4); every split needs the same classes",
    )


def same_image_in_two_splits(tmp):
    root = presplit_tree(tmp)
    original = root / "train" / "benign" / "benign_1.png"
    copy = root / "test" / "benign" / "renamed.png"
    shutil.copy(original, copy)
    return folder(root), f"{copy}: the same image (content hash) as {original} in train"


def csv_missing_file(tmp):
    root = single_tree(tmp)
    manifest = write_manifest(root, [("benign/gone.png", "benign")])
    return [
        "data=csv",
        f"data.manifest={manifest}",
    ], f"{root / 'benign' / 'gone.png'}: missing file, listed on manifest.csv line 14"


def csv_unknown_label(tmp):
    root = single_tree(tmp)
    shutil.copy(root / "benign" / "benign_1.png", root / "cat.png")
    manifest = write_manifest(root, [("cat.png", "cat")])
    expected = f"{root / 'cat.png'}: unknown label 'cat' on manifest.csv line 14; data.classes is ['benign', 'malignant']"
    return ["data=csv", f"data.manifest={manifest}", "data.classes=[benign,malignant]"], expected


CASES = [
    truncated,
    corrupt,
    unreadable,
    empty_file,
    not_an_image,
    empty_class_folder,
    class_sets_differ,
    same_image_in_two_splits,
    csv_missing_file,
    csv_unknown_label,
]


@pytest.fixture
def no_training(monkeypatch):
    """Training must not start: a training step fails the test."""

    def training_step(self, batch, batch_idx):
        raise AssertionError("a training step ran before the data was validated")

    monkeypatch.setattr(Classifier, "training_step", training_step)


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_each_bad_input_stops_before_training_naming_its_file(case, tmp_path, train_config, no_training):
    data, expected = case(tmp_path)
    with pytest.raises(DataError) as err:
        train(train_config(data=data))
    message = str(err.value)
    assert message.startswith("The data has 1 problem(s) (data.on_bad=error)")
    assert f"\n  {expected}\n    fix: " in message


def test_every_problem_is_listed_at_once(tmp_path, train_config, no_training):
    root = single_tree(tmp_path)
    cut = write_truncated_png(root / "benign" / "cut.png")
    notes = root / "malignant" / "notes.txt"
    notes.write_text("x")
    (root / "cyst").mkdir()
    with pytest.raises(DataError) as err:
        train(train_config(data=folder(root)))
    lines = [line for line in str(err.value).splitlines() if line.startswith("  /")]
    assert [line.split(": ", 1)[0].strip() for line in lines] == [str(root / "cyst"), str(cut), str(notes)]
    assert str(err.value).count("    fix: ") == 3


def test_skip_trains_on_the_rest_and_lists_the_files(tmp_path, train_config, caplog):
    root = single_tree(tmp_path)
    bad = {
        write_truncated_png(root / "benign" / "cut.png"): "truncated",
        write_corrupt_png(root / "malignant" / "damaged.png"): "corrupt",
        root / "benign" / "notes.txt": "not an image file",
    }
    (root / "benign" / "notes.txt").write_text("x")
    (root / "cyst").mkdir()
    cfg = train_config("trainer.max_epochs=1", data=[*folder(root), "data.on_bad=skip"])
    with caplog.at_level(logging.WARNING):
        metrics = train(cfg)
    assert metrics["epochs"] == 1
    run = Path(cfg.paths.output_dir)
    skipped = {row["file"]: row for row in csv.DictReader((run / "skipped.csv").read_text().splitlines())}
    assert set(skipped) == {*map(str, bad), str(root / "cyst")}
    for path, reason in bad.items():
        assert skipped[str(path)]["reason"].startswith(reason) and skipped[str(path)]["fix"]
    used = {row["path"] for row in csv.DictReader((run / "splits.csv").read_text().splitlines())}
    assert len(used) == 12 and not used & set(skipped)
    assert json.loads((run / "data_summary.json").read_text())["skipped_files"] == 3
    notes = [r.getMessage() for r in caplog.records if "data.on_bad=skip" in r.getMessage()]
    assert notes == [
        "data.on_bad=skip: left out 3 file(s) with problems; skipped.csv in the run dir lists each with reason and fix."
    ]


def test_a_class_too_small_for_the_split_stops_even_with_skip(tmp_path, train_config, no_training):
    # 3 images of a class now give one each to train, val and test (test_every_class_every_split.py);
    # 2 cannot, and leaving files out cannot help
    root = make_folder_tree(tmp_path / "rare", per_class=12, classes=("benign",), size=16)
    make_folder_tree(root, per_class=2, classes=("malignant",), size=16, seed=1)
    with pytest.raises(DataError) as err:
        train(train_config(data=[*folder(root), "data.on_bad=skip"]))
    message = str(err.value)
    assert message.startswith(
        "Class 'malignant' has 2 images: too few to put one into each of train, val and test "
        "(data.val_fraction=0.15, data.test_fraction=0.15)"
    )
    assert "Add images of 'malignant' (at least 3 images)" in message
