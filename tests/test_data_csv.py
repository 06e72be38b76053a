"""data=csv: a manifest with configurable column names, patient-level splits made here, a split column
used as it is, and clear errors for what the manifest lacks."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from conftest import make_folder_tree
from medtransfer.data.sources.csv_manifest import CsvDataModule
from medtransfer.data.splits import SPLITS
from medtransfer.train import train
from medtransfer.utils.errors import DataError


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    """40 images (20 per class), under images/<class>/; the manifest refers to them relative to images/."""
    return make_folder_tree(tmp_path / "images", per_class=20, size=16)


def rows_with_patients(images: Path) -> list[list[str]]:
    """path, diagnosis, subject: two images per patient, patients numbered within their class."""
    rows = []
    for cls in ("benign", "malignant"):
        for k, path in enumerate(sorted((images / cls).iterdir())):
            rows.append([f"{cls}/{path.name}", cls, f"{cls[0]}{k // 2}"])
    return rows


def test_patient_level_split_with_renamed_columns(images, tmp_path):
    manifest = write_csv(
        tmp_path / "labels.csv", ["file", "diagnosis", "subject"], rows_with_patients(images)
    )
    columns = {"path": "file", "label": "diagnosis", "patient": "subject"}
    datamodule = CsvDataModule(
        manifest=str(manifest), root=str(images), columns=columns, cache_dir=str(tmp_path / "cache")
    )
    datamodule.setup()
    assert datamodule.classes == ["benign", "malignant"]
    sizes = [len(datamodule.data.splits[s]) for s in SPLITS]
    assert sizes[0] == 28 and sorted(sizes[1:]) == [4, 8]  # per class 14/3/3 targets, in pairs: 14 + (2, 4)
    datamodule.write_splits_csv(tmp_path / "splits.csv")
    rows = list(csv.DictReader((tmp_path / "splits.csv").read_text().splitlines()))
    assert len(rows) == 40 and all(r["patient"] for r in rows)
    splits_of = defaultdict(set)
    for row in rows:
        splits_of[row["patient"]].add(row["split"])
    assert len(splits_of) == 20 and all(len(s) == 1 for s in splits_of.values())
    for split in SPLITS:
        assert {r["label"] for r in rows if r["split"] == split} == {"benign", "malignant"}


def test_a_split_column_is_used_as_it_is(images, tmp_path):
    rows = [
        [p, label, ["train", "train", "Val", "test"][k % 4]]
        for k, (p, label, _) in enumerate(rows_with_patients(images))
    ]
    manifest = write_csv(images / "manifest.csv", ["path", "label", "split"], rows)
    datamodule = CsvDataModule(
        manifest=str(manifest), cache_dir=str(tmp_path / "cache")
    )  # root: the manifest's folder
    datamodule.setup()
    for split in SPLITS:
        expected = [str(images / p) for p, _, s in rows if s.lower() == split]
        assert datamodule.data.splits[split].paths == expected
    assert not datamodule.write_splits_csv(tmp_path / "splits.csv")  # nothing was split here


def test_a_patient_in_two_given_splits_is_a_problem(images, tmp_path):
    # rows 0-19: benign patients b0-b9, rows 20-39: malignant m0-m9, two images each
    given = {
        2: "test",
        3: "val",
        6: "test",
        7: "test",
        22: "test",
        23: "test",
        4: "val",
        5: "val",
        24: "val",
        25: "val",
    }
    rows = [
        [p, label, patient, given.get(k, "train")]
        for k, (p, label, patient) in enumerate(rows_with_patients(images))
    ]
    manifest = write_csv(images / "manifest.csv", ["path", "label", "patient_id", "split"], rows)
    with pytest.raises(DataError) as err:
        CsvDataModule(manifest=str(manifest), cache_dir=str(tmp_path / "cache")).setup()
    # patient b1: image 3 in val, image 2 in test; the copy in the later split is the problem
    assert str(err.value).startswith("The data has 1 problem(s)")
    assert f"  {images / rows[2][0]}: patient 'b1' is also in val ({images / rows[3][0]})\n" in str(err.value)


def test_missing_columns_are_named_with_the_fix(images, tmp_path):
    manifest = write_csv(tmp_path / "m.csv", ["image", "label"], [["benign/benign_0.jpg", "benign"]])
    with pytest.raises(DataError) as err:
        CsvDataModule(manifest=str(manifest), root=str(images)).setup()
    assert str(err.value) == (
        f"{manifest}: no column 'path' (data.columns.path); its columns are image, label. "
        "Set data.columns.path to the column that holds the paths."
    )
    # an optional column may be absent under its default name, not under a name the user gave
    with pytest.raises(DataError, match=r"no column 'subject' \(data.columns.patient\)"):
        CsvDataModule(
            manifest=str(manifest), root=str(images), columns={"path": "image", "patient": "subject"}
        ).setup()


def test_train_on_a_manifest_with_balanced_sampling_and_class_weights(tmp_path, train_config):
    images = make_folder_tree(tmp_path / "images", per_class=10, classes=("benign",), size=16)
    make_folder_tree(images, per_class=20, classes=("malignant",), size=16, seed=1)
    rows = [
        [f"{c}/{p.name}", c, f"{c[0]}{k // 2}"]
        for c in ("benign", "malignant")
        for k, p in enumerate(sorted((images / c).iterdir()))
    ]
    manifest = write_csv(tmp_path / "labels.csv", ["path", "label", "patient_id"], rows)
    cfg = train_config(
        "trainer.max_epochs=1",
        "model.class_weights=auto",
        data=["data=csv", f"data.manifest={manifest}", f"data.root={images}", "data.sampler=weighted"],
    )
    train(cfg)
    run = Path(cfg.paths.output_dir)
    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["source"]["type"] == "csv" and summary["sampler"] == "weighted"
    assert summary["class_totals"] == {"benign": 10, "malignant": 20}
    train_counts = summary["counts"]["train"]
    hparams = torch.load(run / "checkpoints/last.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["class_weights"] == "auto" and hparams["class_counts"] == [
        train_counts["benign"],
        train_counts["malignant"],
    ]
    assert summary["class_weights"]["benign"] == pytest.approx(
        sum(train_counts.values()) / (2 * train_counts["benign"]), abs=1e-6
    )
    assert {r["patient"] for r in csv.DictReader((run / "splits.csv").read_text().splitlines())} == {
        r[2] for r in rows
    }
