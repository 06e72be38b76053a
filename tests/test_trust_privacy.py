"""Privacy: nothing leaves the machine (local loggers only, no network connection during train, eval and
predict), and the patient fields of DICOM headers reach no file that medtransfer writes: run dirs, logs,
TensorBoard events, checkpoints, predictions, overlays, the validation cache."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from conftest import TINY, square_image, write_dicom
from medtransfer.utils.compose import compose_config
from medtransfer.utils.paths import CONFIG_DIR

FAKE_PATIENT = {
    "PatientName": "Zyxwvut^Quortlebee",
    "PatientID": "FAKE-7731-ID",
    "PatientBirthDate": "19010203",
    "PatientAddress": "12 Nowhere Lane, Qwxville",
    "OtherPatientIDs": "ALT-5512-ID",
    "InstitutionName": "Hospital Of Fakeplace",
}
NEEDLES = [b"zyxwvut", b"quortlebee", b"fake-7731-id", b"19010203", b"qwxville", b"alt-5512-id", b"fakeplace"]
LOCAL_LOGGERS = {
    "medtransfer.loggers.tensorboard.HParamsTensorBoardLogger",
    "lightning.pytorch.loggers.CSVLogger",
}


def dicom_tree(root: Path, per_class: int = 10, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for label, name in enumerate(("benign", "malignant")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = square_image(label, size, rng).astype(np.uint16) * 257
            write_dicom(root / name / f"{name}_{i}.dcm", pixels, patient=FAKE_PATIENT)
    return root


def found_in(path: Path) -> list[bytes]:
    """The needles in the file's bytes (any case), and in the text chunks of a PNG."""
    data = path.read_bytes().lower()
    if path.suffix == ".png":
        with Image.open(path) as im:
            data += json.dumps(getattr(im, "text", {})).encode().lower()
    return [n for n in NEEDLES if n in data]


def run_entry_point(module, argv: list[str], monkeypatch) -> None:
    """The console script, in this process, as the command line would run it (Hydra run dir, log file)."""
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", argv)
    module.main()
    GlobalHydra.instance().clear()


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test (and is recorded)."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network connection attempted to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def test_fake_patient_name_from_dicom_headers_is_in_no_written_file(tmp_path, monkeypatch, no_network):
    from medtransfer import evaluate, predict, train

    images = dicom_tree(tmp_path / "dicom")
    # the generator put the fake patient into every header: the search below can find it
    assert set(found_in(next(images.rglob("*.dcm")))) == set(NEEDLES)

    outputs, data_dir = tmp_path / "outputs", tmp_path / "data"
    common = [f"paths.log_dir={outputs}", f"paths.data_dir={data_dir}"]
    run = outputs / "train"
    run_entry_point(
        train,
        [
            "medtransfer-train",
            *TINY,
            "trainer.max_epochs=1",
            "data=folder",
            f"data.root={images}",
            "logger=many",
            "callbacks.fit_on_validation.calibrate=true",
            "callbacks.explanations.images=4",
            "callbacks.test_report.bootstrap_samples=100",
            *common,
            f"hydra.run.dir={run}",
        ],
        monkeypatch,
    )
    best = run / "checkpoints" / "best.ckpt"
    run_entry_point(
        predict,
        [
            "medtransfer-predict",
            f"ckpt_path={best}",
            f"input={images}",
            "explain=true",
            *common,
            f"hydra.run.dir={outputs / 'predict'}",
        ],
        monkeypatch,
    )
    run_entry_point(
        evaluate,
        [
            "medtransfer-eval",
            f"ckpt_path={best}",
            "trainer.accelerator=cpu",
            *common,
            f"hydra.run.dir={outputs / 'eval'}",
        ],
        monkeypatch,
    )
    assert no_network == []

    # everything medtransfer wrote was written, and every kind of file is searched
    written = sorted(p for p in [*outputs.rglob("*"), *data_dir.rglob("*")] if p.is_file())
    names = {p.relative_to(outputs).as_posix() for p in written if outputs in p.parents}
    for expected in (
        "train/.hydra/config.yaml",
        "train/train.log",
        "train/splits.csv",
        "train/data_summary.json",
        "train/metrics.json",
        "train/checkpoints/best.ckpt",
        "train/checkpoints/last.ckpt",
        "train/csv/metrics.csv",
        "train/explanations.png",
        "train/per_class_report.md",
        "train/calibration.json",
        "predict/predictions.csv",
        "predict/predictions.json",
        "predict/predict.log",
        "eval/metrics.json",
        "eval/evaluate.log",
    ):
        assert expected in names, expected
    assert any(n.startswith("train/tensorboard/events.out.tfevents") for n in names)
    assert sum(n.startswith("predict/explanations/") for n in names) == 20
    assert any(".cache" in p.parts for p in written)  # the validation cache is searched too
    leaks = {str(p): found for p in written if (found := found_in(p))}
    assert leaks == {}

    # the file paths are what identifies an image
    assert str(images / "benign" / "benign_0.dcm") in (run / "splits.csv").read_text()
    assert (
        str(images / "malignant" / "malignant_3.dcm") in (outputs / "predict" / "predictions.csv").read_text()
    )

    # calibrate=true went through training: fitted on val, stored in best.ckpt, reported in metrics.json
    metrics = json.loads((run / "metrics.json").read_text())
    saved = torch.load(best, weights_only=True)["medtransfer"]["calibration"]
    assert metrics["val/temperature"] == saved["temperature"]
    assert metrics["val/ece_after"] == saved["val_ece_after"] <= metrics["val/ece_before"]
    assert {"test/ece", "test/ece_calibrated"} <= set(metrics)


def test_default_loggers_are_local_and_every_logger_option_is():
    cfg = compose_config("train", Path("/tmp/unused"), ["data.root=x"])
    assert {lg["_target_"] for lg in cfg.logger.values()} == {
        "medtransfer.loggers.tensorboard.HParamsTensorBoardLogger"
    }
    for option in sorted((CONFIG_DIR / "logger").glob("*.yaml")):
        cfg = compose_config("train", Path("/tmp/unused"), ["data.root=x", f"logger={option.stem}"])
        assert {lg["_target_"] for lg in cfg.logger.values()} <= LOCAL_LOGGERS, option.name
