"""End-to-end training on tiny generated data: the run dir holds every file it should, with the right content."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from medtransfer.train import build_data, build_model, build_trainer, train
from medtransfer.utils.errors import NonFiniteLossError


def read_events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0}
    )
    acc.Reload()
    return acc


def test_train_on_npz_writes_a_self_describing_run_dir(train_config):
    cfg = train_config("trainer.max_epochs=3")
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)

    for name in (
        "data_summary.json",
        "metrics.json",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "confusion_matrix_test.png",
    ):
        assert (run / name).is_file(), name
    assert not (run / "splits.csv").exists()  # the .npz came split: medtransfer made no split

    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["counts"]["train"] == {"0": 24, "1": 24}
    assert summary["channels"] == 1 and summary["class_weights"] == {"0": 1.0, "1": 1.0}

    written = json.loads((run / "metrics.json").read_text())
    assert written == metrics
    for key in (
        "val/auroc_best",
        "test/auroc",
        "test/acc",
        "test/balanced_acc",
        "test/f1",
        "test/sensitivity",
        "test/specificity",
    ):
        assert key in written and math.isfinite(written[key]), key
    assert written["test/auroc"] > 0.9  # the square's position is easy to learn


def test_tensorboard_holds_lrs_images_and_real_hparams_metric(train_config):
    cfg = train_config("trainer.max_epochs=2")
    metrics = train(cfg)
    acc = read_events(Path(cfg.paths.output_dir))
    tags = acc.Tags()
    assert {"train/loss_step", "val/auroc", "val/auroc_best", "lr/head", "lr/stem", "trainable/head"} <= set(
        tags["scalars"]
    )
    assert "train/augmented_samples" in tags["images"]
    # HPARAMS: the session lists the run's hyper-parameters and the real metrics, and the scalar TensorBoard
    # shows in the HPARAMS table for val/auroc_best is the best validation value (no placeholder hp_metric)
    plugin = acc.PluginTagToContent("hparams")
    exp = plugin_data_pb2.HParamsPluginData.FromString(plugin["_hparams_/experiment"]).experiment
    metric_tags = {m.name.tag for m in exp.metric_infos}
    assert "val/auroc_best" in metric_tags and "test/auroc" in metric_tags and "hp_metric" not in metric_tags
    session = plugin_data_pb2.HParamsPluginData.FromString(
        plugin["_hparams_/session_start_info"]
    ).session_start_info
    assert session.hparams["model.backbone"].string_value == "resnet18"
    assert session.hparams["optimizer.lr"].number_value == cfg.optimizer.lr
    best = acc.Scalars("val/auroc_best")[-1].value
    assert math.isclose(best, metrics["val/auroc_best"], rel_tol=1e-6)
    assert best == max(e.value for e in acc.Scalars("val/auroc"))


def test_train_on_folder_tree_splits_and_records_it(train_config, folder_tree):
    cfg = train_config(data=["data=folder", f"data.root={folder_tree}"])
    train(cfg)
    run = Path(cfg.paths.output_dir)
    rows = list(csv.DictReader((run / "splits.csv").open()))
    assert len(rows) == 32
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    per_class = {(r["label"], r["split"]) for r in rows}
    assert ("benign", "test") in per_class and ("malignant", "test") in per_class  # stratified
    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["classes"] == ["benign", "malignant"] and summary["channels"] == 1
    ckpt = torch.load(run / "checkpoints/best.ckpt", weights_only=True)
    assert ckpt["medtransfer"]["class_names"] == ["benign", "malignant"]
    assert ckpt["state_dict"]["head.0.weight"].shape[0] == 2


def test_split_is_seeded_and_stratified(folder_tree, tmp_path):
    from medtransfer.data.sources.folder import FolderDataModule

    def assignment(seed):
        dm = FolderDataModule(root=str(folder_tree), seed=seed)
        dm.setup()
        dm.write_splits_csv(tmp_path / f"s{seed}.csv")
        return (tmp_path / f"s{seed}.csv").read_text()

    assert assignment(1) == assignment(1)
    assert assignment(1) != assignment(2)


class PoisonHead(L.Callback):
    """Makes the head's weights NaN at the start of epoch 1, so every later loss is NaN."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            with torch.no_grad():
                pl_module.head[-1].weight.fill_(float("nan"))


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(train_config):
    # checked every 50 steps and at the end of each epoch (6 steps here), not with a sync on every step
    cfg = train_config("trainer.log_every_n_steps=50", "trainer.max_epochs=3")
    datamodule = build_data(cfg)
    model = build_model(cfg, datamodule)
    trainer = build_trainer(cfg, model)
    trainer.callbacks.insert(0, PoisonHead())
    with pytest.raises(NonFiniteLossError, match=r"at step 6 \(checked at epoch 1, step 12\)"):
        trainer.fit(model, datamodule=datamodule)
    last = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())


def test_callbacks_none_trains_and_writes_no_extra_files(train_config):
    cfg = train_config("callbacks=none", "trainer.max_epochs=1")
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    written = {p.relative_to(run).parts[0] for p in run.rglob("*") if p.is_file()}
    assert written == {"metrics.json", "tensorboard"}  # no checkpoint, run file, figure or report
    assert "test/auroc" in metrics and "test/ece" not in metrics  # the test report is a callback


def test_the_log_file_holds_the_console_tables_and_every_warning(tmp_path, npz_file):
    """Run as the console script runs (utils/command_process.py, the interpreter's last garbage collection
    skipped): what the command wrote is complete once the process has exited."""
    from conftest import run_train_cli

    result = run_train_cli(tmp_path, npz_file, "trainer.log_every_n_steps=50")
    assert result.returncode == 0, result.stderr[-3000:]
    (log,) = (tmp_path / "outputs" / "train" / "runs").glob("*/train.log")
    written = json.loads((log.parent / "metrics.json").read_text())
    assert read_events(log.parent).Scalars("test/auroc")[-1].value == pytest.approx(written["test/auroc"])
    text = log.read_text()
    for shown in (
        "data details",
        "layer groups (full, bn=frozen)",
        "│ layer3 ",
        "│ test/auroc ",
        "│ epochs ",
    ):
        assert shown in text, shown
    # Lightning's warning about the logging interval (6 batches < log_every_n_steps) went to the log file
    assert "[py.warnings][WARNING]" in text and "smaller than the logging interval" in text


def test_progress_bar_off_drops_the_progress_bar_callback(tmp_path, npz_file):
    from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

    from medtransfer.utils.compose import compose_config

    overrides = ["data=medmnist", f"data.path={npz_file}", "model.weights=null", "trainer.accelerator=cpu"]
    cfg = compose_config("train", tmp_path / "run", [*overrides, "trainer.enable_progress_bar=false"])
    model = build_model(cfg, build_data(cfg))
    assert not any(isinstance(c, ProgressBar) for c in build_trainer(cfg, model).callbacks)
    cfg = compose_config("train", tmp_path / "run", overrides)  # the default keeps the Rich bar
    assert any(isinstance(c, RichProgressBar) for c in build_trainer(cfg, model).callbacks)
