"""data.num_workers=auto: workers where the cores are free for the input pipeline, none where the model
already uses them all and the images are in memory."""

from __future__ import annotations

import pytest

from medtransfer.data import datamodule as dm


@pytest.mark.parametrize(
    ("cores", "in_memory", "on_gpu", "workers"),
    [
        (2, True, False, 0),  # CPU training on images in RAM: the main process collates
        (2, False, False, 1),  # files: one worker decodes while the model trains
        (16, False, False, 8),
        (16, True, True, 8),  # a GPU trains: workers augment even images held in RAM
        (4, True, True, 3),
        (1, True, True, 1),
    ],
)
def test_auto_workers_follow_the_cores_and_the_accelerator(monkeypatch, cores, in_memory, on_gpu, workers):
    monkeypatch.setattr(dm.os, "cpu_count", lambda: cores)
    assert dm.default_num_workers(in_memory, on_gpu) == workers


def test_loaders_of_images_in_ram_use_no_workers_on_the_cpu(train_config):
    from medtransfer.train import build_data

    datamodule = build_data(train_config("data.num_workers=auto"))
    loader = datamodule.train_dataloader()
    assert loader.num_workers == 0 and not loader.pin_memory and not loader.persistent_workers
