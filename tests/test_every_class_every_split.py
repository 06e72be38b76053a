"""Every class in every split: a small class still gets an image into val and test, a class too small for
the split is a DataError naming it, and macro metrics average over the classes present (with a warning
naming the missing ones) instead of counting a missing class as 0."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from conftest import make_folder_tree
from medtransfer.data.sources.folder import FolderDataModule
from medtransfer.data.splits import (
    SPLITS,
    class_split_sizes,
    connected_groups,
    grouped_split,
    stratified_split,
)
from medtransfer.evaluation.metrics import classification_metrics
from medtransfer.utils.errors import DataError


@pytest.mark.parametrize("small", [3, 4, 5])
def test_a_class_of_three_images_reaches_val_and_test(small):
    labels = np.array(["common"] * 40 + ["rare"] * small)
    for seed in range(10):
        assignment = stratified_split(labels, 0.15, 0.15, seed)
        for split in SPLITS:
            assert ((assignment == split) & (labels == "rare")).sum() >= 1, (seed, split)
    # the common class keeps its proportions (round(0.15 * 40) = 6)
    assert ((assignment == "val") & (labels == "common")).sum() == 6


def test_split_sizes_never_empty_train():
    assert class_split_sizes(3, 0.15, 0.15) == (1, 1)
    assert class_split_sizes(3, 0.4, 0.4) == (1, 1)
    assert class_split_sizes(2, 0.5, 0.0) == (1, 0)
    assert class_split_sizes(100, 0.15, 0.15) == (15, 15)
    with pytest.raises(ValueError):
        class_split_sizes(2, 0.15, 0.15)


def test_a_class_too_small_for_the_split_is_a_clear_error():
    labels = np.array(["common"] * 40 + ["rare"] * 2)
    with pytest.raises(DataError, match=r"Class 'rare' has 2 images.*at least 3"):
        stratified_split(labels, 0.15, 0.15, 0)


def test_grouped_split_puts_a_rare_class_of_three_patients_in_every_split():
    # 30 patients of the common class with 2 images each, 3 patients of the rare class with 3 images each
    labels = np.array([0] * 60 + [1] * 9)
    patients = [f"C{i // 2}" for i in range(60)] + [f"R{i // 3}" for i in range(9)]
    for seed in range(10):
        assignment = grouped_split(labels, connected_groups(patients), 0.15, 0.15, seed)
        for split in SPLITS:
            assert ((assignment == split) & (labels == 1)).sum() >= 1, (seed, split)
        by_patient = {}
        for p, s in zip(patients, assignment, strict=True):
            by_patient.setdefault(p, set()).add(s)
        assert all(len(s) == 1 for s in by_patient.values())


def test_grouped_split_with_two_patients_of_a_class_is_a_clear_error():
    labels = np.array([0] * 60 + [1] * 6)
    patients = [f"C{i // 2}" for i in range(60)] + [f"R{i // 3}" for i in range(6)]
    with pytest.raises(DataError, match=r"Class 1 has 2 patients"):
        grouped_split(labels, connected_groups(patients), 0.15, 0.15, 0)


def test_a_folder_with_a_class_of_three_images_has_it_in_every_split(tmp_path):
    root = make_folder_tree(tmp_path / "images", per_class=12, classes=("a", "b"), size=16)
    make_folder_tree(root, per_class=3, classes=("rare",), size=16, seed=1)
    dm = FolderDataModule(root=str(root), image_size=16, batch_size=4, num_workers=0)
    dm.setup()
    for split in SPLITS:
        assert dm.class_counts(split)[dm.classes.index("rare")] >= 1, split


def test_macro_metrics_average_over_the_classes_present(caplog):
    metrics = classification_metrics(3, "val/", ["normal", "viral", "bacterial"])
    target = torch.tensor([0, 0, 1, 1, 0, 1])  # no 'bacterial' in this split
    probs = torch.nn.functional.one_hot(target, 3).float() * 0.8 + 0.1
    with caplog.at_level(logging.WARNING):
        values = metrics(probs, target)
    # a perfect classifier scores 1.0; torchmetrics' macro average would count the missing class as 0
    assert values["val/auroc"].item() == pytest.approx(1.0)
    assert values["val/balanced_acc"].item() == pytest.approx(1.0)
    assert values["val/f1"].item() == pytest.approx(1.0)
    assert "'bacterial'" in caplog.text and "val/auroc" in caplog.text


def test_macro_metrics_with_every_class_equal_torchmetrics_macro():
    from torchmetrics.classification import MulticlassAUROC

    g = torch.Generator().manual_seed(0)
    target = torch.arange(30) % 3
    probs = torch.softmax(torch.randn(30, 3, generator=g), 1)
    ours = classification_metrics(3)(probs, target)["auroc"]
    assert ours.item() == pytest.approx(MulticlassAUROC(3, average="macro")(probs, target).item())
