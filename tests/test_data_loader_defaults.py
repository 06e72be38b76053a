"""data.num_workers=auto: workers where the cores are free for the input pipeline (a GPU trains), none
where the model already uses them all (the CPU trains)."""

from __future__ import annotations

import pytest

from medtransfer.data import datamodule as dm
from medtransfer.train import build_data, build_model, build_trainer


@pytest.mark.parametrize(
    ("cores", "on_gpu", "workers"),
    [
        (2, False, 0),  # the CPU trains: the main process decodes and augments
        (64, False, 0),
        (16, True, 8),  # a GPU trains: workers decode and augment, up to 8
        (4, True, 3),
        (1, True, 1),
    ],
)
def test_auto_workers_follow_the_accelerator_and_the_cores(monkeypatch, cores, on_gpu, workers):
    monkeypatch.setattr(dm.os, "cpu_count", lambda: cores)
    assert dm.default_num_workers(on_gpu) == workers


def test_loaders_for_a_cpu_trainer_use_no_workers_and_no_pinning(train_config, folder_tree):
    cfg = train_config(
        "data.num_workers=auto", "data.cache=none", data=["data=folder", f"data.root={folder_tree}"]
    )
    datamodule = build_data(cfg)
    datamodule.trainer = build_trainer(cfg, build_model(cfg, datamodule))
    loader = datamodule.train_dataloader()
    assert loader.num_workers == 0 and not loader.pin_memory and not loader.persistent_workers
    assert datamodule.dataloader("val").num_workers == 0
    datamodule.num_workers = 1  # an explicit count is kept, with workers that persist between epochs
    assert datamodule.train_dataloader().num_workers == 1 and datamodule.train_dataloader().persistent_workers
