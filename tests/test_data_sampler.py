"""data.sampler=weighted: every class drawn about equally often per epoch, reproducibly; the default
shuffles and keeps the data's imbalance."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_folder_tree
from medtransfer.data.sources.folder import FolderDataModule
from medtransfer.utils.errors import ConfigError


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    root = make_folder_tree(
        tmp_path_factory.mktemp("imbalanced") / "images", per_class=6, classes=("rare",), size=16
    )
    return make_folder_tree(root, per_class=34, classes=("common",), size=16, seed=1)


def drawn_labels(root, tmp_path, sampler, seed=0, epochs=10) -> np.ndarray:
    datamodule = FolderDataModule(
        root=str(root), sampler=sampler, seed=seed, cache="none", cache_dir=str(tmp_path)
    )
    datamodule.setup()
    labels = datamodule.data.splits["train"].labels
    loader = datamodule.train_dataloader()
    return np.concatenate([labels[list(loader.sampler)] for _ in range(epochs)])


def test_weighted_sampler_balances_the_classes(imbalanced, tmp_path):
    # train holds 4 rare (label 1) and 24 common images: 1 in 7
    shuffled = drawn_labels(imbalanced, tmp_path, sampler=None)
    assert shuffled.mean() == pytest.approx(4 / 28)
    balanced = drawn_labels(imbalanced, tmp_path, sampler="weighted")
    assert len(balanced) == 280 and 0.4 < balanced.mean() < 0.6  # expected 0.5, sd 0.03


def test_weighted_sampler_is_seeded(imbalanced, tmp_path):
    first = drawn_labels(imbalanced, tmp_path, "weighted", seed=3, epochs=1)
    assert (first == drawn_labels(imbalanced, tmp_path, "weighted", seed=3, epochs=1)).all()


def test_unknown_sampler_is_a_config_error(imbalanced):
    with pytest.raises(ConfigError, match=r"data\.sampler='balanced': use null"):
        FolderDataModule(root=str(imbalanced), sampler="balanced")
