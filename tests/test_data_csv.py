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


def manifest_rows(images: Path) -> list[list[str]]:
    return [
        [f"{c}/{p.name}", label]
        for c, label in (("benign", "nævus"), ("malignant", "mélanome"))
        for p in sorted((images / c).iterdir())
    ]


@pytest.mark.parametrize(
    ("encoding", "delimiter"),
    [("cp1252", ","), ("utf-8", ";"), ("utf-8-sig", "\t"), ("utf-8-sig", ";"), ("utf-16", "\t")],
    ids=["excel-cp1252", "semicolon", "bom-tab", "bom-semicolon", "utf16-unicode-text"],
)
def test_manifests_as_spreadsheets_save_them(images, tmp_path, encoding, delimiter):
    """Excel on Windows writes cp1252 and, in many locales, ';'; 'CSV UTF-8' adds a BOM; 'Unicode text'
    is UTF-16 with tabs."""
    lines = [delimiter.join(["path", "label"])] + [delimiter.join(r) for r in manifest_rows(images)]
    manifest = tmp_path / "labels.csv"
    manifest.write_bytes(("\r\n".join(lines) + "\r\n").encode(encoding))  # one BOM, if any
    datamodule = CsvDataModule(manifest=str(manifest), root=str(images))
    datamodule.setup()
    assert datamodule.classes == ["mélanome", "nævus"]
    assert sum(len(s) for s in datamodule.data.splits.values()) == 40


def test_a_manifest_in_no_known_encoding_names_the_line_and_the_fix(images, tmp_path):
    manifest = tmp_path / "labels.csv"
    rows = b"\r\n".join(b"%s,%s" % (p.encode(), label.encode()) for p, label in manifest_rows(images)[:3])
    manifest.write_bytes(b"path,label\r\n" + rows + b"\r\nbenign/x.png,\x81\x8d\r\n")  # undefined in cp1252
    with pytest.raises(DataError) as err:
        CsvDataModule(manifest=str(manifest), root=str(images)).setup()
    assert str(err.value).startswith(
        f"{manifest}: line 5 holds byte 0x81, which is neither UTF-8 nor Windows-1252"
    )
    assert "CSV UTF-8" in str(err.value)


def test_a_header_in_one_column_is_named_with_the_fix(images, tmp_path):
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path label\nbenign/benign_0.jpg benign\n")
    with pytest.raises(DataError, match=r"line 1: the header 'path label' reads as a single column"):
        CsvDataModule(manifest=str(manifest), root=str(images)).setup()


def test_paths_leaving_the_root_and_rows_that_disagree_are_reported(images, tmp_path):
    outside = make_folder_tree(tmp_path / "elsewhere", per_class=1, size=16, classes=("benign",))
    rows = [[f"{c}/{p.name}", c] for c in ("benign", "malignant") for p in sorted((images / c).iterdir())]
    rows += [
        ["../elsewhere/benign/benign_0.jpg", "benign"],  # line 42
        [str(outside / "benign" / "benign_0.jpg"), "benign"],  # line 43
        ["benign/benign_0.jpg", "malignant"],  # line 44: line 2 says benign
        ["benign/benign_1.png", "benign"],  # line 45: the same as line 3, kept once
    ]
    manifest = write_csv(tmp_path / "labels.csv", ["path", "label"], rows)
    with pytest.raises(DataError) as err:
        CsvDataModule(manifest=str(manifest), root=str(images)).setup()
    message = str(err.value)
    assert message.startswith("The data has 3 problem(s)")
    assert (
        f"{outside / 'benign' / 'benign_0.jpg'}: the path '../elsewhere/benign/benign_0.jpg' on labels.csv "
        f"line 42 leads outside data.root={images}"
    ) in message
    assert "on labels.csv line 43 leads outside data.root" in message
    assert (
        f"{images / 'benign' / 'benign_0.jpg'}: listed on several rows that disagree (labels.csv line 2: "
        "label 'benign'; labels.csv line 44: label 'malignant')"
    ) in message
    skipping = CsvDataModule(manifest=str(manifest), root=str(images), on_bad="skip")
    skipping.setup()
    assert sum(len(s) for s in skipping.data.splits.values()) == 39  # benign_0 left out, benign_1 once
