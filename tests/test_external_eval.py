"""External evaluation without training: the data read for a model matches classes by name (any order, any
subset), keeps data without a split of its own whole, refuses classes the model does not know; metrics of
a subset of classes are those the classes present define."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from conftest import make_folder_tree
from medtransfer.data.sources.csv_manifest import CsvDataModule
from medtransfer.data.sources.folder import FolderDataModule
from medtransfer.utils.errors import DataError

TRAINED = ["glioma", "meningioma", "pituitary"]


def folder_data(root: Path, classes: list[str], whole: bool = True) -> FolderDataModule:
    data = FolderDataModule(str(root), image_size=16, num_workers=0)
    data.for_evaluation(classes, whole=whole)
    data.setup()
    return data


def labels_by_folder(data: FolderDataModule, split: str = "all") -> dict[str, set[int]]:
    part = data.data.splits[split]
    out: dict[str, set[int]] = {}
    for path, label in zip(part.paths, part.labels, strict=True):
        out.setdefault(Path(path).parent.name, set()).add(int(label))
    return out


def test_an_unsplit_folder_is_read_whole_with_the_models_class_indices(tmp_path):
    # no meningioma, and the folders sort differently from the trained order: pituitary must stay 2
    root = make_folder_tree(tmp_path / "hospital", per_class=4, classes=("glioma", "pituitary"), size=16)
    data = folder_data(root, TRAINED)
    assert set(data.data.splits) == {"all"} and not data.data.made_split
    assert len(data.data.splits["all"]) == 8
    assert data.classes == TRAINED
    assert labels_by_folder(data) == {"glioma": {0}, "pituitary": {2}}
    # trained classes in an order that is not sorted: apple is class 1 of the model, though it sorts first
    root = make_folder_tree(tmp_path / "fruit", per_class=3, classes=("apple", "zebra"), size=16)
    assert labels_by_folder(folder_data(root, ["zebra", "apple"])) == {"apple": {1}, "zebra": {0}}


def test_one_class_and_an_empty_class_folder_are_evaluated(tmp_path):
    root = make_folder_tree(tmp_path / "hospital", per_class=3, classes=("pituitary",), size=16)
    (root / "glioma").mkdir()  # an empty folder of a trained class: no images of it
    data = folder_data(root, TRAINED)
    assert labels_by_folder(data) == {"pituitary": {2}}
    assert data.class_counts("all") == [0, 0, 3]


def test_a_presplit_folder_keeps_its_split_and_adds_all(tmp_path):
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        make_folder_tree(tmp_path / "pre" / split, per_class=n, classes=("pituitary", "glioma"), size=16)
    data = folder_data(tmp_path / "pre", TRAINED)
    assert {s: len(p) for s, p in data.data.splits.items()} == {"train": 8, "val": 4, "test": 6, "all": 18}
    assert labels_by_folder(data, "test") == {"glioma": {0}, "pituitary": {2}}


def test_a_manifest_is_matched_by_its_labels(tmp_path):
    root = make_folder_tree(tmp_path / "images", per_class=3, classes=("a", "b"), size=16)
    rows = [["path", "label"]] + [
        [f"{c}/{p.name}", {"a": "pituitary", "b": "meningioma"}[c]]
        for c in ("a", "b")
        for p in sorted((root / c).iterdir())
    ]
    manifest = tmp_path / "labels.csv"
    with manifest.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    data = CsvDataModule(str(manifest), root=str(root), image_size=16, num_workers=0)
    data.for_evaluation(TRAINED, whole=True)
    data.setup()
    assert set(data.data.splits) == {"all"}
    assert labels_by_folder(data) == {"a": {2}, "b": {1}}


def test_a_class_the_model_was_not_trained_on_is_named_with_the_fix(tmp_path):
    root = make_folder_tree(tmp_path / "hospital", per_class=2, classes=("Glioma", "tumour"), size=16)
    with pytest.raises(DataError) as err:
        folder_data(root, TRAINED)
    message = str(err.value)
    assert "'tumour'" in message and "'Glioma' is probably 'glioma'" in message
    assert "'glioma', 'meningioma', 'pituitary'" in message and "rename" in message
    assert str(root) in message


def test_training_still_needs_two_classes(tmp_path):
    root = make_folder_tree(tmp_path / "one", per_class=6, classes=("pituitary",), size=16)
    with pytest.raises(DataError, match="1 class folder"):
        FolderDataModule(str(root), image_size=16, num_workers=0).setup()


# ------------------------------------------------------------------ metrics over the classes present
def three_class_model():
    from medtransfer.models.classifier import Classifier

    return Classifier(num_classes=3, class_names=TRAINED, image_size=16)


def test_multiclass_metrics_are_over_the_classes_present(tmp_path):
    from medtransfer.evaluate import split_metrics, undefined_here
    from medtransfer.evaluation.split_report import evaluation_report

    model = three_class_model()
    g = torch.Generator().manual_seed(0)
    targets = torch.tensor([0, 2] * 15)  # no meningioma
    logits = 2 * torch.nn.functional.one_hot(targets, 3).float() + torch.randn(30, 3, generator=g)
    values = split_metrics(model, logits, targets, "all", 8)
    probs = logits.softmax(1)
    expected = [float(binary_auroc(probs[:, k], (targets == k).long())) for k in (0, 2)]
    assert values["all/auroc"] == pytest.approx(sum(expected) / 2, abs=1e-5)
    recalls = [float((probs.argmax(1)[targets == k] == k).float().mean()) for k in (0, 2)]
    assert values["all/balanced_acc"] == pytest.approx(sum(recalls) / 2, abs=1e-5)
    assert undefined_here(model, targets, "all") == {}
    report = evaluation_report(model, logits, targets, "all", tmp_path, bootstrap_samples=200)
    assert report["all/auroc_ci_low"] <= values["all/auroc"] <= report["all/auroc_ci_high"]
    rows = {r["class"]: r for r in csv.DictReader((tmp_path / "per_class_report.csv").open())}
    assert rows["meningioma"]["support"] == "0" and rows["meningioma"]["recall"] == "n/a"
    assert float(rows["pituitary"]["recall"]) == pytest.approx(recalls[1], abs=1e-4)
    assert "No images of meningioma (split=all)" in (tmp_path / "per_class_report.md").read_text()


def test_one_class_present_leaves_auroc_out_with_the_reason():
    from medtransfer.evaluate import split_metrics, undefined_here
    from medtransfer.models.classifier import Classifier

    model = Classifier(num_classes=2, class_names=["benign", "malignant"], image_size=16)
    targets = torch.zeros(6, dtype=torch.long)  # only benign
    logits = torch.tensor([[2.0, 0.0]] * 4 + [[0.0, 2.0]] * 2)
    values = split_metrics(model, logits, targets, "all", 8)
    assert "all/auroc" not in values and "all/sensitivity" not in values
    assert values["all/specificity"] == pytest.approx(4 / 6) and values["all/acc"] == pytest.approx(4 / 6)
    why = undefined_here(model, targets, "all")
    assert set(why) == {"all/auroc", "all/sensitivity"}
    assert "both classes" in why["all/auroc"] and "'benign'" in why["all/auroc"]
    assert json.dumps(values, allow_nan=False)  # no NaN left in
