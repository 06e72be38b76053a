"""Caching: validation results per data-set fingerprint (a second run reads no image), and decoded images
in RAM (later epochs decode no file)."""

from __future__ import annotations

import logging
import time

import pytest

import medtransfer.data.files.decode as decode_module
import medtransfer.data.files.inspection as inspection_module
from conftest import make_folder_tree
from medtransfer.data.sources.folder import FolderDataModule

log = logging.getLogger(__name__)


def folder_datamodule(root, cache_dir, **kwargs) -> FolderDataModule:
    datamodule = FolderDataModule(
        root=str(root), cache_dir=str(cache_dir), image_size=16, batch_size=8, num_workers=0, **kwargs
    )
    datamodule.setup()
    return datamodule


def test_second_validation_of_an_unchanged_folder_is_a_cache_hit(tmp_path, monkeypatch, caplog):
    root = make_folder_tree(tmp_path / "images", per_class=12, size=16)
    start = time.perf_counter()
    first = folder_datamodule(root, tmp_path / "cache", cache="none")
    first_s = time.perf_counter() - start
    assert not first.inspection.cache_hit

    def no_reading(path):
        raise AssertionError(f"{path} was inspected again")

    monkeypatch.setattr(inspection_module, "inspect_file", no_reading)
    start = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="medtransfer.data.files.inspection"):
        second = folder_datamodule(root, tmp_path / "cache", cache="none")
    second_s = time.perf_counter() - start
    log.info("setup with validation: first run %.3f s, second run %.3f s (cache hit)", first_s, second_s)
    assert second.inspection.cache_hit
    assert "Validation cache hit: 24 files unchanged, nothing read" in caplog.text
    assert second.summary() == first.summary()

    (root / "benign" / "benign_0.jpg").write_bytes(
        (root / "benign" / "benign_2.jpg").read_bytes()
    )  # a file changed
    monkeypatch.undo()
    assert not folder_datamodule(root, tmp_path / "cache", cache="none").inspection.cache_hit


@pytest.fixture
def decode_count(monkeypatch):
    """How many times an image file is decoded for training (read_image goes through decode; validation
    holds its own reference and is not counted)."""
    calls = []
    real = decode_module.decode

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(decode_module, "decode", counting)
    return calls


def epochs(datamodule, n: int) -> None:
    loader = datamodule.train_dataloader()
    for _ in range(n):
        for _batch in loader:
            pass


@pytest.mark.parametrize(
    ("cache", "limit_gb", "in_memory"),
    [("ram", 2, True), ("auto", 2, True), ("auto", 1e-6, False), ("none", 2, False)],
)
def test_ram_cache_decodes_each_file_once(tmp_path, decode_count, cache, limit_gb, in_memory):
    root = make_folder_tree(
        tmp_path / "images", per_class=10, size=24
    )  # 20 images of 576 bytes: over 1e-6 GiB
    datamodule = folder_datamodule(root, tmp_path / "cache", cache=cache, cache_limit_gb=limit_gb)
    assert datamodule.summary()["in_memory"] is in_memory
    assert len(decode_count) == 20 * in_memory  # the RAM cache decodes every file once, in setup
    decode_count.clear()
    epochs(datamodule, 2)
    n_train = len(datamodule.data.splits["train"])
    assert len(decode_count) == (0 if in_memory else 2 * n_train)
    image, _ = datamodule.dataset("val")[0]
    assert image.shape == (1, 16, 16)


def test_the_next_job_on_the_same_unchanged_files_reuses_the_decoded_images(tmp_path, decode_count, caplog):
    """A sweep's jobs run one after another in one process: the second data module on the same files
    decodes nothing and holds the very same tensors; a changed file, or other channels, decodes again."""
    root = make_folder_tree(tmp_path / "images", per_class=10, size=24)
    first = folder_datamodule(root, tmp_path / "cache", cache="ram")
    assert len(decode_count) == 20
    decode_count.clear()
    with caplog.at_level(logging.INFO, logger="medtransfer.data.sources.image_files"):
        second = folder_datamodule(root, tmp_path / "cache", cache="ram", seed=1)  # another split, same files
    assert decode_count == []
    assert "Reused the previous job's 20 images into RAM" in caplog.text
    shared = {id(t) for s in ("train", "val", "test") for t in first.data.splits[s].images}
    assert {id(t) for s in ("train", "val", "test") for t in second.data.splits[s].images} == shared
    assert first.data.splits["val"].paths != second.data.splits["val"].paths  # the split is its own

    changed = root / "benign" / "benign_0.jpg"
    changed.write_bytes((root / "benign" / "benign_2.jpg").read_bytes())
    third = folder_datamodule(root, tmp_path / "cache", cache="ram")
    assert len(decode_count) == 20
    index = {
        p: t
        for s in ("train", "val", "test")
        for p, t in zip(third.data.splits[s].paths, third.data.splits[s].images, strict=True)
    }
    other = root / "benign" / "benign_2.jpg"
    assert index[str(changed)].equal(index[str(other)])  # the new content, not the kept image

    decode_count.clear()
    rgb = FolderDataModule(root=str(root), cache_dir=str(tmp_path / "cache"), image_size=16, cache="ram")
    rgb.model_channels = 3  # a model with an RGB stem: the gray files decoded to 3 channels
    rgb.setup()
    assert len(decode_count) == 20 and rgb.data.splits["train"].images[0].shape[0] == 3
