"""Linear probing on cached backbone features: the same head and metrics as training on images, computed
once and reused by later runs, recomputed when anything they depend on changes, and used only when the
features really are fixed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import TINY
from medtransfer.data.datamodule import Split
from medtransfer.features.cache import split_fingerprint, state_fingerprint
from medtransfer.features.datamodule import FeatureDataModule, head_training_data
from medtransfer.models.checkpoint import load_classifier
from medtransfer.train import build_data, build_model, build_trainer, train
from medtransfer.utils.compose import compose_config
from medtransfer.utils.errors import ConfigError

PROBE = ["finetune=linear_probe", "data.augment=null", "optimizer.lr=0.05", "trainer.max_epochs=3"]


def run(tmp_path, name: str, npz_file, *overrides: str) -> tuple[dict, dict]:
    """Train; returns (metrics.json, the last checkpoint's head weights)."""
    cfg = compose_config(
        "train",
        tmp_path / name,
        [*TINY, "data=medmnist", f"data.path={npz_file}", *PROBE, *overrides],
    )
    train(cfg)
    metrics = json.loads((tmp_path / name / "metrics.json").read_text())
    head = load_classifier(tmp_path / name / "checkpoints" / "last.ckpt").head.state_dict()
    return metrics, head


def test_cached_features_give_the_same_head_and_metrics_as_images(tmp_path, npz_file):
    cache = f"feature_cache.dir={tmp_path / 'features'}"
    images_metrics, images_head = run(tmp_path, "images", npz_file, "feature_cache.enabled=false")
    cached_metrics, cached_head = run(tmp_path, "cached", npz_file, "feature_cache.enabled=true", cache)

    assert len(list((tmp_path / "features").glob("*.pt"))) == 3  # train, val, test
    for name, weight in images_head.items():
        assert not torch.equal(weight, torch.zeros_like(weight))
        torch.testing.assert_close(cached_head[name], weight, rtol=1e-4, atol=1e-5)
    assert images_metrics.keys() == cached_metrics.keys()
    for key, value in images_metrics.items():
        assert cached_metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-5, nan_ok=True), key
    assert (tmp_path / "cached" / "explanations.png").is_file()  # Grad-CAM still runs on the images
    summary = json.loads((tmp_path / "cached" / "data_summary.json").read_text())
    assert summary["features_cached"] == {"train": False, "val": False}  # computed on the first run

    # a second run (another lr, as in a sweep) reads them back instead of running the backbone
    run(tmp_path, "again", npz_file, "feature_cache.enabled=true", cache, "optimizer.lr=0.01")
    summary = json.loads((tmp_path / "again" / "data_summary.json").read_text())
    assert summary["features_cached"] == {"train": True, "val": True}


def test_fingerprints_change_with_any_weight_statistic_or_pixel():
    backbone = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    before = state_fingerprint(backbone)
    backbone[1].running_mean[0] += 1e-3  # a statistic, not a parameter
    assert state_fingerprint(backbone) != before

    images = np.zeros((4, 8, 8), dtype=np.uint8)
    split = Split(labels=np.array([0, 1, 0, 1]), images=images)
    before = split_fingerprint(split)
    images[2, 3, 3] = 1
    assert split_fingerprint(split) != before
    relabelled = Split(labels=np.array([1, 1, 0, 1]), images=images)
    assert split_fingerprint(relabelled) != split_fingerprint(split)


def setup_run(train_config, *overrides: str):
    cfg = train_config(*overrides)
    datamodule = build_data(cfg)
    model = build_model(cfg, datamodule)
    trainer = build_trainer(cfg, model)
    return datamodule, model, trainer


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (["finetune=linear_probe", "data.augment.rotation=10"], "augments"),
        (["finetune=partial", "data.augment=null"], "the backbone trains"),
        (
            ["finetune=partial", "finetune.frozen_until=layer4", "finetune.bn=train", "data.augment=null"],
            "bn=train",
        ),
    ],
)
def test_features_are_cached_only_when_they_are_fixed(train_config, overrides, reason):
    datamodule, model, trainer = setup_run(train_config, *overrides)
    assert head_training_data(datamodule, model, trainer, "auto") is datamodule
    with pytest.raises(ConfigError, match=reason):
        head_training_data(datamodule, model, trainer, True)


def test_the_feature_loaders_keep_batching_and_the_images_stay_for_callbacks(train_config):
    # a head-only partial strategy is a linear probe too
    datamodule, model, trainer = setup_run(
        train_config, "finetune=partial", "finetune.frozen_until=layer4", "data.augment=null"
    )
    data = head_training_data(datamodule, model, trainer, "auto", None)
    assert isinstance(data, FeatureDataModule)
    data.setup("fit")
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (datamodule.batch_size, 512) and y.dtype == torch.long
    assert data.dataset("val")[0][0].shape == (1, 16, 16)  # Grad-CAM and sample grids get images
    features, _ = next(iter(data.dataloader("val")))
    images, _ = next(iter(datamodule.dataloader("val")))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(features), model(images), rtol=1e-4, atol=1e-5)
