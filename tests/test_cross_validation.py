"""Cross-validation (docs/cross_validation.md): folds grouped by patient and stratified by label, the test
split outside the folds, folds.csv, the CV report and its out-of-fold predictions."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from conftest import make_folder_tree
from medtransfer.data.sources.folder import FolderDataModule
from medtransfer.data.splits import connected_groups, grouped_folds, iterative_grouped_folds
from medtransfer.utils.errors import ConfigError, DataError


def test_every_patient_in_one_fold_and_classes_balanced():
    rng = np.random.default_rng(0)
    per_patient = rng.integers(1, 4, 60)
    labels = np.repeat(rng.integers(0, 2, 60), per_patient)
    patients = np.repeat([f"P{i}" for i in range(60)], per_patient)
    folds = grouped_folds(labels, connected_groups(patients), 5, seed=3)
    folds_of = defaultdict(set)
    for patient, fold in zip(patients, folds, strict=True):
        folds_of[patient].add(int(fold))
    assert all(len(f) == 1 for f in folds_of.values())
    assert set(folds) == set(range(5))
    for c in (0, 1):
        counts = np.bincount(folds[labels == c], minlength=5)
        assert counts.min() > 0
        assert np.abs(counts - (labels == c).sum() / 5).max() <= 3  # patients of up to 3 images


def test_one_image_per_patient_gives_counts_within_one_of_ideal():
    labels = np.array([0] * 23 + [1] * 9 + [2] * 14)
    folds = grouped_folds(labels, np.arange(len(labels)), 4, seed=1)
    for c in range(3):
        counts = np.bincount(folds[labels == c], minlength=4)
        assert np.abs(counts - (labels == c).sum() / 4).max() < 1


def test_same_seed_same_folds_and_too_few_patients_is_an_error():
    labels = np.arange(40) % 2
    assert (grouped_folds(labels, np.arange(40), 5, 7) == grouped_folds(labels, np.arange(40), 5, 7)).all()
    with pytest.raises(DataError, match=r"data.folds=5.*data.folds=3"):
        grouped_folds(np.array([0] * 10 + [1] * 3), np.arange(13), 5, 0)


def test_multilabel_folds_keep_patients_together():
    rng = np.random.default_rng(0)
    targets = (rng.random((60, 3)) < 0.3).astype(float)
    patients = np.arange(60) // 2
    folds = iterative_grouped_folds(targets, patients, 3, seed=0)
    assert all(len(set(folds[patients == p])) == 1 for p in range(30))
    for label in range(3):
        assert (np.bincount(folds[targets[:, label] == 1], minlength=3) > 0).all()


def _folds_csv(tmp_path, fold: int, seed: int = 0):
    root = tmp_path / "tree"
    if not root.exists():
        make_folder_tree(root, per_class=15, size=16)
    dm = FolderDataModule(root=str(root), image_size=16, folds=5, fold=fold, seed=seed, cache="none")
    dm.setup()
    out = tmp_path / f"folds_{fold}_{seed}.csv"
    assert dm.write_folds_csv(out)
    return dm, out.read_text()


def test_fold_is_val_test_fixed_and_folds_csv_identical(tmp_path):
    dm0, csv0 = _folds_csv(tmp_path, 0)
    dm3, csv3 = _folds_csv(tmp_path, 3)
    assert csv0 == csv3  # the assignment does not depend on which fold is val
    rows = [line.split(",") for line in csv0.strip().splitlines()[1:]]
    assert len(rows) == 30 and {r[2] for r in rows} == {"0", "1", "2", "3", "4", "test"}
    assert sorted(dm0.data.splits["test"].paths) == sorted(dm3.data.splits["test"].paths)
    val3 = sorted(r[0] for r in rows if r[2] == "3")
    assert sorted(dm3.data.splits["val"].paths) == val3
    assert not set(dm3.data.splits["train"].paths) & set(val3)
    assert _folds_csv(tmp_path, 1, seed=1)[1] != csv0  # another seed, other folds


@pytest.mark.parametrize("folds, fold", [(1, 0), (5, 5), (3, -1)])
def test_bad_fold_settings_name_the_value(tmp_path, folds, fold):
    with pytest.raises(ConfigError, match=r"data\.fold"):
        FolderDataModule(root=str(tmp_path), folds=folds, fold=fold)


CV_TINY = [
    "model.weights=null",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "++callbacks.rich_progress_bar=null",
    "callbacks.explanations=null",
    "callbacks.sample_images=null",
    "data.image_size=16",
    "data.batch_size=8",
    "data.num_workers=0",
    "print_config=false",
    "callbacks.test_report.bootstrap_samples=0",
]


@pytest.fixture(scope="module")
def cv_sweep(tmp_path_factory):
    """One 2-fold cross-validation of a tiny tree with one command (shared by the tests below)."""
    import os
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("cv")
    root = make_folder_tree(tmp / "tree", per_class=12, size=16)
    sweep = tmp / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "medtransfer.train",
        "-m",
        "hparams_search=kfold",
        "data.folds=2",
        "data=folder",
    ]
    cmd += [f"data.root={root}", *CV_TINY, f"paths.log_dir={tmp / 'outputs'}", f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=500, cwd=tmp, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep


def test_cv_report_pools_every_non_test_image_once(cv_sweep):
    import csv

    import torch
    from torchmetrics.functional.classification import binary_auroc

    folds = [(cv_sweep / str(j) / "folds.csv").read_text() for j in (0, 1)]
    assert folds[0] == folds[1]
    non_test = {r["path"] for r in csv.DictReader(folds[0].splitlines()) if r["fold"] != "test"}
    with (cv_sweep / "oof_predictions.csv").open() as f:
        oof = list(csv.DictReader(f))
    paths = [r["path"] for r in oof]
    assert len(paths) == len(set(paths)) and set(paths) == non_test
    with (cv_sweep / "cv_report.csv").open() as f:
        pooled = next(r for r in csv.DictReader(f) if r["fold"] == "pooled")
    recomputed = binary_auroc(
        torch.tensor([float(r["prob_malignant"]) for r in oof], dtype=torch.float64),
        torch.tensor([int(r["target"]) for r in oof]),
    )
    assert float(pooled["oof_auroc"]) == pytest.approx(float(recomputed), abs=1e-12)
    report = (cv_sweep / "cv_report.md").read_text()
    assert "mean" in report and "Pooled out-of-fold AUROC" in report


def test_kfold_preset_composes_and_medmnist_refuses_folds(tmp_path):
    from hydra.utils import instantiate

    from medtransfer.utils.compose import compose_config

    cfg = compose_config("train", tmp_path / "run", ["hparams_search=kfold", "data.root=x"])
    assert cfg.data.folds == 5 and cfg.data.fold == 0
    cfg = compose_config("train", tmp_path / "run", ["data=medmnist", "data.path=x.npz", "+data.folds=3"])
    with pytest.raises(Exception, match=r"data\.folds=3: cross-validation") as raised:  # Hydra wraps it
        instantiate(cfg.data)
    assert isinstance(raised.value, ConfigError) or isinstance(raised.value.__cause__, ConfigError)


def test_the_test_split_is_the_one_made_without_folds(tmp_path):
    dm, _ = _folds_csv(tmp_path, 2)
    plain = FolderDataModule(root=str(tmp_path / "tree"), image_size=16, seed=0, cache="none")
    plain.setup()
    assert sorted(plain.data.splits["test"].paths) == sorted(dm.data.splits["test"].paths)
