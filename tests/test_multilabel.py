"""Multi-label classification end to end on generated data: two independent findings are learned; unknown
labels carry no gradient; per-label thresholds travel from the checkpoint through eval and predict; N×L
.npz files and multi-label manifests load; joined labels under a single-label task are refused; the
iterative split keeps patients whole and puts every finding in val and test."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medtransfer.data.sources.csv_manifest import CsvDataModule
from medtransfer.data.sources.medmnist import MedMNISTDataModule
from medtransfer.data.splits import iterative_grouped_split
from medtransfer.evaluate import evaluate
from medtransfer.evaluation.multilabel import masked_bce_with_logits
from medtransfer.models.checkpoint import add_to_checkpoint, load_classifier
from medtransfer.models.classifier import Classifier
from medtransfer.predict import predict
from medtransfer.train import train
from medtransfer.utils.compose import compose_config
from medtransfer.utils.errors import ConfigError, DataError


def finding_image(targets, size: int, rng: np.random.Generator) -> np.ndarray:
    """Noise; finding k (k < 4) shows as a bright square in quadrant k (top-left, bottom-right, ...)."""
    image = rng.integers(0, 60, size=(size, size), dtype=np.uint8)
    q = size // 2
    for k, t in enumerate(targets):
        if t == 1:
            r0, c0 = [(0, 0), (q, q), (0, q), (q, 0)][k % 4]
            image[r0 : r0 + q, c0 : c0 + q] = rng.integers(180, 255, size=(q, q), dtype=np.uint8)
    return image


def make_multilabel_npz(
    path: Path, sizes=(128, 48, 48), num_labels: int = 2, size: int = 16, unknown: float = 0.0, seed: int = 0
) -> Path:
    """A MedMNIST-style .npz with (N, num_labels) labels, each finding independent (prevalence 0.4);
    a share `unknown` of the training labels is -1 (their image shows the true finding)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        targets = (rng.random((n, num_labels)) < 0.4).astype(np.int8)
        arrays[f"{split}_images"] = np.stack([finding_image(t, size, rng) for t in targets])
        if split == "train" and unknown:
            targets = np.where(rng.random(targets.shape) < unknown, -1, targets).astype(np.int8)
        arrays[f"{split}_labels"] = targets
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory):
    from conftest import TINY

    root = tmp_path_factory.mktemp("multilabel")
    npz = make_multilabel_npz(root / "findings.npz", unknown=0.1)
    cfg = compose_config(
        "train",
        root / "run",
        [
            *TINY,
            "data=medmnist",
            f"data.path={npz}",
            "data.class_names=[left,right]",
            "data.augment=null",
            "trainer.max_epochs=3",
            "model.pos_weight=auto",
            "callbacks.test_report.bootstrap_samples=100",
            "callbacks.explanations.images=4",
            "callbacks.explanations.label=right",
        ],
    )
    return root, npz, train(cfg)


def test_two_independent_findings_are_each_learned(multilabel_run):
    root, _, metrics = multilabel_run
    run = root / "run"
    assert metrics["test/auroc/left"] > 0.9 and metrics["test/auroc/right"] > 0.9
    assert metrics["test/auroc"] == pytest.approx(
        (metrics["test/auroc/left"] + metrics["test/auroc/right"]) / 2, abs=1e-5
    )
    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["task"] == "multilabel" and summary["classes"] == ["left", "right"]
    rows = read_csv(run / "per_label_report.csv")
    assert [r["label"] for r in rows] == ["left", "right"]
    assert all(float(r["auroc_ci_low"]) <= float(r["auroc"]) <= float(r["auroc_ci_high"]) for r in rows)
    for name in ("per_label_report.md", "roc_curves.png", "explanations.png", "operating_point.json"):
        assert (run / name).is_file(), name


def test_per_label_thresholds_round_trip_checkpoint_eval_predict(multilabel_run, tmp_path):
    root, npz, metrics = multilabel_run
    best = root / "run" / "checkpoints" / "best.ckpt"
    stored = torch.load(best, weights_only=True)["medtransfer"]["operating_point"]["thresholds"]
    assert set(stored) == {"left", "right"} and all(0 < t < 1 for t in stored.values())
    model = load_classifier(best)
    assert model.thresholds.tolist() == pytest.approx([stored["left"], stored["right"]])

    cfg = compose_config(
        "eval",
        tmp_path / "eval",
        [f"ckpt_path={best}", "trainer.accelerator=cpu", "bootstrap.samples=0"],
    )
    results = evaluate(cfg)
    assert results["test/auroc"] == pytest.approx(metrics["test/auroc"], abs=1e-6)
    report = {r["label"]: r for r in read_csv(tmp_path / "eval" / "per_label_report.csv")}
    assert {k: float(r["threshold"]) for k, r in report.items()} == pytest.approx(stored, abs=1e-4)

    images = tmp_path / "images"
    images.mkdir()
    with np.load(npz) as data:
        for i, image in enumerate(data["test_images"][:12]):
            Image.fromarray(image).save(images / f"{i:02d}.png")
    out = predict(best, images, tmp_path / "pred" / "predictions.csv", explain=True, explain_label="left")
    rows = read_csv(out)
    assert {"prob_left", "prob_right", "pred_left", "pred_right", "explained_label"} <= set(rows[0])
    for row in rows:
        for label in ("left", "right"):
            assert int(row[f"pred_{label}"]) == int(float(row[f"prob_{label}"]) >= stored[label])
        assert row["explained_label"] == "left" and Path(row["explanation"]).is_file()
        assert row["prediction"] == "|".join(c for c in ("left", "right") if row[f"pred_{c}"] == "1")
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["thresholds"] == pytest.approx(stored)
    with pytest.raises(ConfigError, match=r"explain_label='nope'"):
        predict(best, images, tmp_path / "p2.csv", explain=True, explain_label="nope")

    # a temperature per label (calibrate=true) is written to predictions.json by label
    calibrated = tmp_path / "calibrated.ckpt"
    shutil.copy(best, calibrated)
    add_to_checkpoint(calibrated, calibration={"temperature": [1.5, 0.75]})
    out = predict(calibrated, images, tmp_path / "p3" / "predictions.csv")
    assert json.loads(out.with_suffix(".json").read_text())["temperature"] == {"left": 1.5, "right": 0.75}


def test_masked_labels_give_exactly_zero_gradient():
    torch.manual_seed(0)
    logits = torch.randn(6, 3, requires_grad=True)
    targets = (torch.rand(6, 3) < 0.5).float()
    mask = torch.rand(6, 3) < 0.7
    flipped = torch.where(mask, targets, 1 - targets)  # only the masked-out entries differ
    grads = []
    for t in (targets, flipped):
        loss = masked_bce_with_logits(logits, t, mask=mask, pos_weight=torch.tensor([1.0, 3.0, 0.5]))
        (grad,) = torch.autograd.grad(loss, logits)
        grads.append((loss.detach(), grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    assert (grads[0][1][~mask] == 0).all() and (grads[0][1][mask] != 0).all()

    # in the model: unknown targets (NaN, data.missing_label=mask) are masked the same way
    model = Classifier(weights=None, num_classes=3, in_channels=1, task="multilabel", image_size=16)
    nan_targets = torch.where(mask, targets, torch.nan)
    loss = model.loss(logits, nan_targets)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss) and (grad[~mask] == 0).all() and (grad[mask] != 0).all()


def test_an_n_by_14_npz_loads_as_multilabel(tmp_path):
    npz = make_multilabel_npz(tmp_path / "chestmnist.npz", sizes=(20, 8, 8), num_labels=14, unknown=0.2)
    dm = MedMNISTDataModule(path=str(npz), name="chestmnist", image_size=16, batch_size=4, num_workers=0)
    dm.setup()
    assert dm.task == "multilabel" and dm.num_classes == 14 and dm.classes[2] == "effusion"
    labels = dm.data.splits["train"].labels
    assert labels.shape == (20, 14) and np.isnan(labels).any()
    _, y = next(iter(dm.train_dataloader()))
    assert y.dtype == torch.float32 and y.shape == (4, 14)
    assert dm.summary()["unknown"]["train"]["effusion"] == int(np.isnan(labels[:, 2]).sum())
    with pytest.raises(ConfigError, match=r"data\.task=multiclass, but"):
        MedMNISTDataModule(path=str(npz), task="multiclass", num_workers=0).setup()
    negative = MedMNISTDataModule(path=str(npz), missing_label="negative", num_workers=0)
    negative.setup()
    assert not np.isnan(negative.data.splits["train"].labels).any()


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_manifest(root: Path, rows: list[dict], name: str = "labels.csv", size: int = 16) -> Path:
    """PNG images for `rows` (each a dict with path, its label columns, patient) and the manifest."""
    rng = np.random.default_rng(0)
    for i, row in enumerate(rows):
        (root / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 255, size=(size, size), dtype=np.uint8)
        image[0, 0] = i % 256  # every image distinct (no duplicate grouping by content)
        image[0, 1] = i // 256
        Image.fromarray(image).save(root / row["path"])
    with open(root / name, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / name


def test_joined_labels_under_a_single_label_task_are_refused(tmp_path):
    cells = ["Atelectasis|Effusion", "No Finding", "Effusion", "Atelectasis"] * 3
    rows = [{"path": f"images/{i}.png", "label": c} for i, c in enumerate(cells)]
    manifest = write_manifest(tmp_path, rows)
    dm = CsvDataModule(manifest=str(manifest), num_workers=0)
    with pytest.raises(DataError) as err:
        dm.setup()
    message = str(err.value)
    assert str(manifest) in message and "'Atelectasis|Effusion'" in message
    assert 'data.label_sep="|"' in message and "single-label" in message
    with pytest.raises(ConfigError, match=r"data\.task=multiclass with data\.label_sep"):
        CsvDataModule(manifest=str(manifest), label_sep="|", task="multiclass")


def test_a_joined_manifest_splits_by_patient_with_every_finding_in_val_and_test(tmp_path):
    rng = np.random.default_rng(1)
    findings = ["Atelectasis", "Effusion", "Hernia"]
    rows = []
    for i in range(120):
        present = [f for f, p in zip(findings, (0.3, 0.3, 0.06), strict=True) if rng.random() < p]
        rows.append(
            {"path": f"images/{i}.png", "label": "|".join(present) or "No Finding", "patient": f"p{i // 3}"}
        )
    manifest = write_manifest(tmp_path, rows)
    dm = CsvDataModule(
        manifest=str(manifest),
        columns={"patient": "patient"},
        label_sep="|",
        negative_label="No Finding",
        num_workers=0,
        cache="none",
    )
    dm.setup()
    assert dm.task == "multilabel" and dm.classes == findings
    for split in ("val", "test"):
        assert all(n > 0 for n in dm.class_counts(split)), (split, dm.class_counts(split))
    dm.write_splits_csv(tmp_path / "splits.csv")
    splits_of = {}
    for row in read_csv(tmp_path / "splits.csv"):
        splits_of.setdefault(row["patient"], set()).add(row["split"])
    assert len(splits_of) == 40 and all(len(s) == 1 for s in splits_of.values())


def test_a_manifest_with_a_column_per_label_reads_unknowns(tmp_path):
    values = ["1", "0", "", "-1", "1.0", "nan"]
    rows = [
        {"path": f"images/{i}.png", "Effusion": values[i % 6], "Edema": values[(i + 1) % 6], "split": s}
        for i, s in enumerate(["train"] * 12 + ["val"] * 6 + ["test"] * 6)
    ]
    manifest = write_manifest(tmp_path, rows)
    dm = CsvDataModule(manifest=str(manifest), columns={"labels": ["Effusion", "Edema"]}, num_workers=0)
    dm.setup()
    labels = dm.data.splits["train"].labels
    assert dm.classes == ["Effusion", "Edema"] and labels.shape == (12, 2)
    assert np.isnan(labels[:, 0]).sum() == 6 and (labels[:, 0] == 1).sum() == 4


def test_iterative_split_keeps_groups_whole_and_places_rare_labels():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(100), 3)
    targets = (rng.random((300, 4)) < np.array([0.4, 0.2, 0.05, 0.02])).astype(float)
    targets[rng.random((300, 4)) < 0.05] = np.nan
    splits = iterative_grouped_split(targets, groups, 0.15, 0.15, seed=0)
    for g in range(100):
        assert len(set(splits[groups == g])) == 1
    for split in ("val", "test"):
        positives = np.nansum(targets[splits == split], axis=0)
        assert (positives > 0).all(), (split, positives)
    assert 0.6 < (splits == "train").mean() < 0.8
