"""Shared fixtures: tiny generated data (a class folder tree, a MedMNIST-style .npz, DICOM and broken
files) and the real Hydra config composed once and overridden per test, with tiny limits, on the CPU, offline."""

from __future__ import annotations

import os
import sys

# Before torch loads its OpenMP runtime (here and, through the environment, in every command a test starts):
# threads that wait for work sleep instead of spinning. On a shared 2-core machine spinning threads of
# several processes (the test process, DDP ranks, sweep jobs, other work) starve each other: a tiny training
# step took 2-3 s instead of 0.2 s. A value already set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import io
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig
from PIL import Image

from medtransfer.utils.compose import compose_config

os.environ.setdefault("PYTHONHASHSEED", "0")


def square_image(label: int, size: int, rng: np.random.Generator, channels: int = 1) -> np.ndarray:
    """Noise with a bright square whose corner depends on the class: top-left (0), bottom-right (1),
    top-right (2). Learnable in a few steps, so tests can assert that a model learned."""
    image = rng.integers(0, 60, size=(size, size), dtype=np.uint8)
    q = size // 2
    r0, c0 = [(0, 0), (q, q), (0, q)][label]
    image[r0 : r0 + q, c0 : c0 + q] = rng.integers(180, 255, size=(q, q), dtype=np.uint8)
    if channels == 3:
        image = np.stack([image, image // 2 + 60, image], axis=-1)
    return image


def make_folder_tree(
    root: Path,
    per_class: int = 16,
    classes=("benign", "malignant"),
    size: int = 24,
    channels: int = 1,
    seed: int = 0,
) -> Path:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext = ".png" if i % 2 else ".jpg"
            Image.fromarray(square_image(label, size, rng, channels)).save(root / name / f"{name}_{i}{ext}")
    return root


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_truncated_png(path: Path, seed: int = 0) -> Path:
    """A valid PNG cut after its first 60 bytes (header intact, image data missing)."""
    path.write_bytes(png_bytes(np.random.default_rng(seed).integers(0, 255, (16, 16), dtype=np.uint8))[:60])
    return path


def write_corrupt_png(path: Path, seed: int = 0) -> Path:
    """A PNG of full length whose compressed image data is damaged."""
    data = bytearray(png_bytes(np.random.default_rng(seed).integers(0, 255, (16, 16), dtype=np.uint8)))
    start = data.index(b"IDAT") + 8
    data[start : start + 8] = bytes(b ^ 0xFF for b in data[start : start + 8])
    path.write_bytes(bytes(data))
    return path


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    patient: dict[str, str] | None = None,
) -> Path:
    """A single-frame grayscale DICOM file (explicit VR little endian) holding `pixels` (uint16 or int16).
    patient: header attributes to set, e.g. {"PatientName": "Doe^Jane", "PatientID": "X1"}."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = int(pixels.dtype == np.int16)
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept or 0, "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    for keyword, value in (patient or {}).items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def make_npz(
    path: Path, sizes=(48, 16, 16), num_classes: int = 2, size: int = 16, channels: int = 1, seed: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        labels = np.arange(n) % num_classes
        images = np.stack([square_image(int(y), size, rng, channels) for y in labels])
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture(scope="session")
def folder_tree(tmp_path_factory) -> Path:
    return make_folder_tree(tmp_path_factory.mktemp("folder") / "images")


@pytest.fixture(scope="session")
def npz_file(tmp_path_factory) -> Path:
    return make_npz(tmp_path_factory.mktemp("npz") / "tiny.npz")


TINY = [
    "model.weights=null",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=2",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "++callbacks.rich_progress_bar=null",
    # last.ckpt every epoch (the default waits a minute between writes): tests interrupt and resume tiny runs
    "++callbacks.last_checkpoint.min_interval_s=0",
    "data.image_size=16",
    "data.batch_size=8",
    "data.num_workers=0",
    "print_config=false",
]


@pytest.fixture
def train_config(tmp_path, npz_file):
    """A function: overrides -> composed train config on the tiny .npz (unless data= is overridden)."""

    def make(*overrides: str, data: list[str] | None = None) -> DictConfig:
        data = data if data is not None else ["data=medmnist", f"data.path={npz_file}"]
        return compose_config("train", tmp_path / "run", [*TINY, *data, *overrides])

    return make


TESTS = Path(__file__).parent
TINY_CLI = [*(o for o in TINY if not o.startswith("trainer.max_epochs")), "trainer.max_epochs=1"]


# `medtransfer-train` as its console script runs it (utils/command_process.py), wherever pip put the script
TRAIN_COMMAND = [
    sys.executable,
    "-c",
    "import sys; from medtransfer.utils.command_process import train; sys.argv[0] = 'medtransfer-train'; train()",
]


def run_train_cli(cwd: Path, npz: Path, *args: str, multirun: bool = False, timeout: int = 500):
    """`medtransfer-train` (TRAIN_COMMAND) on the tiny .npz in a subprocess (tests/ on PYTHONPATH for probes),
    with outputs under cwd/outputs."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    cmd = [*TRAIN_COMMAND, *(["-m"] if multirun else [])]
    cmd += ["data=medmnist", f"data.path={npz}", *TINY_CLI, f"paths.log_dir={cwd / 'outputs'}", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
