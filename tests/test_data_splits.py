"""Splits made here: by patient (no patient in two splits) and by content (copies of an image together),
stratified by label as far as the groups allow."""

from __future__ import annotations

import shutil
from collections import defaultdict

import numpy as np
import pytest

from conftest import make_folder_tree
from medtransfer.data.sources.folder import FolderDataModule
from medtransfer.data.splits import SPLITS, connected_groups, grouped_split, stratified_split

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
MAX_IMAGES_PER_PATIENT = 6


def patients_with_images(seed: int, minority: float):
    """30-80 patients with 1-6 images each; a patient's class is the minority class with probability
    `minority`, and 5% of images carry the other label (patients with both findings)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(30, 80))
    per_patient = rng.integers(1, MAX_IMAGES_PER_PATIENT + 1, n)
    labels = np.repeat((rng.random(n) < minority).astype(int), per_patient)
    labels = np.where(rng.random(len(labels)) < 0.05, 1 - labels, labels)
    patients = np.repeat([f"P{i:03d}" for i in range(n)], per_patient)
    return labels, patients


@pytest.mark.parametrize("minority", [0.1, 0.3, 0.5])
def test_patients_never_cross_splits_and_classes_stay_balanced(minority):
    for seed in range(50):
        labels, patients = patients_with_images(seed, minority)
        assignment = grouped_split(labels, connected_groups(patients), 0.15, 0.15, seed)
        splits_of = defaultdict(set)
        for patient, split in zip(patients, assignment, strict=True):
            splits_of[patient].add(split)
        assert all(len(s) == 1 for s in splits_of.values()), f"seed {seed}: a patient is in two splits"
        for split, fraction in FRACTIONS.items():
            for cls in (0, 1):
                got = int(((assignment == split) & (labels == cls)).sum())
                target = fraction * int((labels == cls).sum())
                assert got > 0 and abs(got - target) <= MAX_IMAGES_PER_PATIENT, (
                    seed,
                    split,
                    cls,
                    got,
                    target,
                )


def test_the_split_is_seeded():
    labels, patients = patients_with_images(0, 0.3)
    groups = connected_groups(patients)
    first = grouped_split(labels, groups, 0.15, 0.15, seed=1)
    assert (first == grouped_split(labels, groups, 0.15, 0.15, seed=1)).all()
    assert (first != grouped_split(labels, groups, 0.15, 0.15, seed=2)).any()


def test_groups_join_items_sharing_a_patient_or_a_content_hash():
    patients = ["a", "a", "b", None, None, ""]
    hashes = ["h1", "h2", "h2", "h3", "h3", "h4"]
    groups = connected_groups(patients, hashes)
    assert groups[0] == groups[1] == groups[2]  # a–a by patient, a–b through the shared image h2
    assert groups[3] == groups[4] != groups[0]  # no patient, the same image
    assert len(set(groups.tolist())) == 3


def test_without_shared_groups_the_split_is_the_plain_stratified_one():
    labels = np.array([0] * 20 + [1] * 7)
    singletons = np.arange(len(labels))
    assert (grouped_split(labels, singletons, 0.15, 0.15, 3) == stratified_split(labels, 0.15, 0.15, 3)).all()


def test_copies_of_an_image_land_in_one_split(tmp_path):
    root = make_folder_tree(tmp_path / "images", per_class=10, size=16)
    copies = [root / "benign" / f"copy_{k}.png" for k in range(3)]
    for copy in copies:
        shutil.copy(root / "benign" / "benign_1.png", copy)
    for seed in range(5):
        datamodule = FolderDataModule(
            root=str(root), seed=seed, cache="none", cache_dir=str(tmp_path / "cache")
        )
        datamodule.setup()
        where = {p: s for s in SPLITS for p in datamodule.data.splits[s].paths}
        assert len({where[str(c)] for c in [root / "benign" / "benign_1.png", *copies]}) == 1
        assert all(len(datamodule.data.splits[s]) > 0 for s in SPLITS)
