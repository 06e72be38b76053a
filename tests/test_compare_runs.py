"""Comparing runs: names from swept overrides, training length that follows the data set, the
experiment=medmnist preset, and the report's table for a paper (seeds pooled, sorted, best marked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import medtransfer.train as train_module
from conftest import make_npz
from medtransfer.evaluation.published import comparison_rows
from medtransfer.report import seed_groups, summary_table
from medtransfer.train import apply_train_length, build_data, plan_train_length, train
from medtransfer.utils.errors import ConfigError
from medtransfer.utils.run_name import file_safe, name_from_overrides, swept_keys
from medtransfer.utils.train_length import epochs_for_min_steps, optimizer_steps_per_epoch


def test_swept_keys_and_names():
    args = [
        "finetune=full,linear_probe",
        "data.path=/x/y.npz",
        "optimizer.lr=1e-3,1e-2",
        "+trainer.foo=range(1,3)",
    ]
    keys = swept_keys(args, {"model.backbone": "resnet18,resnet34"})
    assert keys == ["model.backbone", "finetune", "optimizer.lr", "trainer.foo"]
    job = ["finetune=full", "data.path=/x/y.npz", "optimizer.lr=0.001", "model.backbone=resnet34"]
    name = name_from_overrides(job, keys)
    assert name == "model.backbone=resnet34,finetune=full,optimizer.lr=0.001"
    assert file_safe(name) == name  # readable as a folder name
    assert file_safe("model.weights=/runs/a b/best.ckpt") == "model.weights=_runs_a_b_best.ckpt"
    long = file_safe("x=" + "a" * 300)
    assert len(long) <= 120 and long != file_safe("x=" + "a" * 299)


def test_min_steps_raises_epochs_and_rejects_nonsense():
    assert optimizer_steps_per_epoch(500, 128) == 4
    assert optimizer_steps_per_epoch(500, 128, accumulate_grad_batches=3) == 2
    assert optimizer_steps_per_epoch(5000, 10, limit_train_batches=7) == 7
    assert optimizer_steps_per_epoch(5000, 10, limit_train_batches=0.5) == 250
    assert epochs_for_min_steps(100, 4, 1000) == 250  # 500 images: raised
    assert epochs_for_min_steps(100, 400, 1000) == 100  # 50,000 images: unchanged
    assert epochs_for_min_steps(3, 4, None) == 3
    assert epochs_for_min_steps(-1, 4, 1000) == -1  # unlimited stays unlimited
    with pytest.raises(ConfigError, match=r"train_length\.min_steps=-5"):
        epochs_for_min_steps(3, 4, -5)


def test_medmnist_preset_on_500_images_trains_its_minimum_steps(tmp_path, train_config, monkeypatch):
    npz = make_npz(tmp_path / "pneumoniamnist.npz", sizes=(500, 16, 16), size=16)
    data = ["data=medmnist", f"data.path={npz}"]
    # the preset as it is (batch 128, 100 epochs, min_steps 1000), only the data smaller
    preset = train_config("experiment=medmnist", "data.image_size=null", "data.batch_size=128", data=data)
    assert preset.train_length.min_steps == 1000 and preset.trainer.max_epochs == 2  # TINY: 2 epochs
    with_preset_epochs = train_config(
        "experiment=medmnist", "data.batch_size=128", "trainer.max_epochs=100", data=data
    )
    datamodule = build_data(with_preset_epochs)
    assert datamodule.image_size == 16  # data.image_size=null: the file's own size
    epochs, steps = plan_train_length(with_preset_epochs, datamodule)
    assert steps == 4 and epochs == 250 and epochs * steps >= 1000
    # an epoch count the user typed on the command line is kept (and said); the preset's alone is raised
    typed = {"trainer.max_epochs": "100"}
    monkeypatch.setattr(train_module, "user_override", typed.get)
    apply_train_length(with_preset_epochs, datamodule)
    assert with_preset_epochs.trainer.max_epochs == 100
    monkeypatch.setattr(train_module, "user_override", {}.get)
    apply_train_length(with_preset_epochs, datamodule)
    assert with_preset_epochs.trainer.max_epochs == 250

    # end to end, with a minimum a test can afford: the trainer really takes that many steps
    cfg = train_config(
        "experiment=medmnist",
        "data.batch_size=128",
        "trainer.max_epochs=1",
        "train_length.min_steps=10",
        "++callbacks.explanations=null",
        "++callbacks.test_report.bootstrap_samples=0",
        data=data,
    )
    metrics = train(cfg)
    assert metrics["epochs"] == 3  # 1 epoch of 4 steps raised to 3 epochs: 12 steps >= 10
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    import torch

    assert torch.load(last, weights_only=True)["global_step"] >= 10
    log = json.loads((Path(cfg.paths.output_dir) / "data_summary.json").read_text())
    assert log["source"]["name"] == "pneumoniamnist"  # from the file's name: the paper's numbers apply


def test_published_results_beside_a_run():
    rows = comparison_rows("pneumoniamnist", {"test/auroc": 0.95, "test/acc": 0.86}, "resnet18 (28)")
    assert rows[0]["source"] == "this run" and rows[0]["test AUC"] == 0.95
    assert (rows[1]["model"], rows[1]["test AUC"], rows[1]["test ACC"]) == ("ResNet-18 (28)", 0.944, 0.854)
    assert [r["test AUC"] for r in rows[2:]] == [0.956, 0.948, 0.962]
    assert comparison_rows(None, {}, "x") == [] and comparison_rows("mydata", {}, "x") == []


def test_seed_groups_pool_sort_and_mark_the_best():
    def job(n, finetune, seed, val, auroc):
        return {
            "job": str(n),
            "finetune": finetune,
            "seed": str(seed),
            "status": "completed",
            "optimized_metric": "val/auroc",
            "val_best": val,
            "test/auroc": auroc,
            "test/auroc_ci_low": auroc - 0.02,
            "test/auroc_ci_high": auroc + 0.02,
            "test/acc": 0.8,
        }

    rows = [
        job(0, "full", 1, 0.90, 0.88),
        job(1, "full", 2, 0.92, 0.90),
        job(2, "linear_probe", 1, 0.95, 0.93),
    ]
    rows.append({"job": "3", "finetune": "full", "seed": "3", "status": "failed", "val_best": None})
    groups = seed_groups(rows, ["finetune", "seed"])
    assert [g["run"] for g in groups] == ["finetune=linear_probe", "finetune=full"]  # best first
    assert groups[0]["best"] == "★" and groups[1]["best"] == ""
    full = groups[1]
    assert full["n"] == 2 and full["val_best"] == pytest.approx(0.91)
    assert full["val_best_sd"] == pytest.approx(0.01414, abs=1e-4)
    assert full["test/auroc_ci_low"] == pytest.approx(0.87)
    cells = summary_table(groups)[1]
    assert (
        cells["val/auroc_best"] == "0.910 ± 0.014" and cells["test/auroc"] == "0.890 ± 0.014 [0.870, 0.910]"
    )
