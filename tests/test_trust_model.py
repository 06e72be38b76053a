"""Trust in a trained model, end to end on generated images: Grad-CAM looks at the square that decides the
class, predict writes an overlay per image and decides with the checkpoint's threshold, temperature scaling
fitted on an over-confident model is applied by eval and predict, and the run dir holds the test report.

The images: a dark, faintly noisy background; class `present` adds a bright square in one of the four
quadrants, class `absent` none. 128 px, so that layer4 has 4 × 4 cells and a quadrant is 2 × 2 of them
(Grad-CAM's resolution is the input side / 32)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY
from medtransfer.callbacks.fit_on_validation import fit_on_validation
from medtransfer.data.transforms import eval_transform
from medtransfer.evaluate import datamodule_for, evaluate
from medtransfer.evaluation.explanations import heatmaps
from medtransfer.models.checkpoint import add_to_checkpoint, load_classifier
from medtransfer.predict import predict
from medtransfer.train import train
from medtransfer.utils.compose import compose_config

SIZE = 128
CLASSES = ("absent", "present")


def presence_image(
    label: int,
    rng: np.random.Generator,
    quadrant: int | None = None,
    brightness: tuple[int, int] = (180, 255),
) -> np.ndarray:
    """A dark background with faint noise; class 1 adds a bright square (half a quadrant's side) in the
    middle of one quadrant: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right (random unless given).
    brightness: the square's range of grey values."""
    image = rng.integers(20, 40, size=(SIZE, SIZE), dtype=np.uint8)
    if label == 1:
        q, side = SIZE // 2, SIZE // 4
        r, c = divmod(int(rng.integers(4)) if quadrant is None else quadrant, 2)
        top, left = r * q + (q - side) // 2, c * q + (q - side) // 2
        image[top : top + side, left : left + side] = rng.integers(
            *brightness, size=(side, side), dtype=np.uint8
        )
    return image


def write_split(folder: Path, per_class: int, rng: np.random.Generator, flipped: int = 0) -> None:
    """per_class images of each class; the first `flipped` of each class filed under the other class."""
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            filed = CLASSES[1 - label] if i < flipped else name
            (folder / filed).mkdir(parents=True, exist_ok=True)
            Image.fromarray(presence_image(label, rng)).save(folder / filed / f"{name}_{i}.png")


@pytest.fixture(scope="module")
def presence_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("presence") / "images"
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 6), ("test", 6)):
        write_split(root / split, n, rng)
    return root


@pytest.fixture(scope="module")
def trusted_run(tmp_path_factory, presence_data):
    out = tmp_path_factory.mktemp("trusted") / "run"
    cfg = compose_config(
        "train",
        out,
        [
            *TINY,
            "data=folder",
            f"data.root={presence_data}",
            f"data.image_size={SIZE}",
            "data.augment=null",
            "trainer.max_epochs=4",
            "callbacks.explanations.images=4",
            "callbacks.test_report.bootstrap_samples=300",
        ],
    )
    return out, train(cfg)


def test_run_dir_holds_the_test_report(trusted_run):
    run, metrics = trusted_run
    written = json.loads((run / "metrics.json").read_text())
    assert written == metrics and all(isinstance(v, int | float) for v in written.values())
    for key in (
        "test/ece",
        "threshold",
        "test/sensitivity_at_threshold",
        "test/specificity_at_threshold",
        "test/auroc_ci_low",
        "test/auroc_ci_high",
        "test/acc_ci_low",
        "test/acc_ci_high",
    ):
        assert key in written, key
    assert not {"val/temperature", "test/ece_calibrated", "val/ece_before"} & set(written)  # calibrate=false
    assert written["test/auroc_ci_low"] <= written["test/auroc"] <= written["test/auroc_ci_high"]
    assert written["test/acc_ci_low"] <= written["test/acc"] <= written["test/acc_ci_high"]
    assert 0 <= written["test/ece"] <= 1

    # the threshold: chosen on val by Youden's J, stored in best.ckpt, described in operating_point.json
    saved = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["medtransfer"]
    assert saved["operating_point"]["threshold"] == written["threshold"]
    assert saved["calibration"] is None
    assert json.loads((run / "operating_point.json").read_text())["rule"] == "youden"
    # the per-class table agrees with the sensitivity and specificity at that threshold
    rows = {r["class"]: r for r in csv.DictReader((run / "per_class_report.csv").open())}
    assert int(rows["absent"]["support"]) + int(rows["present"]["support"]) == 12
    assert float(rows["present"]["recall"]) == pytest.approx(
        written["test/sensitivity_at_threshold"], abs=1e-4
    )
    assert float(rows["absent"]["recall"]) == pytest.approx(
        written["test/specificity_at_threshold"], abs=1e-4
    )
    assert f"≥ {written['threshold']:.4g} (youden" in (run / "per_class_report.md").read_text()

    for name in ("roc_curve", "pr_curve", "reliability_diagram", "explanations", "confusion_matrix_test"):
        assert (run / f"{name}.png").stat().st_size > 2000, name
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"test/roc_curve", "test/pr_curve", "test/reliability_diagram", "val/explanations"} <= set(
        events.Tags()["images"]
    )
    assert events.Scalars("test/ece")[-1].value == pytest.approx(written["test/ece"], rel=1e-5)


QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")


def quadrant_means(heatmap: np.ndarray) -> dict[str, float]:
    q = heatmap.shape[0] // 2
    return {
        name: float(heatmap[r * q : (r + 1) * q, c * q : (c + 1) * q].mean())
        for name, (r, c) in zip(QUADRANTS, [(0, 0), (0, 1), (1, 0), (1, 1)], strict=True)
    }


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_heatmap_concentrates_on_the_square_that_decides_the_class(trusted_run, method):
    run, _ = trusted_run
    model = load_classifier(run / "checkpoints" / "best.ckpt")
    transform = eval_transform(SIZE, model.preprocessing["mean"], model.preprocessing["std"])
    rng = np.random.default_rng(7)
    images = torch.stack(
        [
            transform(torch.from_numpy(presence_image(1, rng, quadrant=k))[None])
            for k in range(4)
            for _ in range(2)
        ]
    )
    with torch.inference_mode():
        assert (model.probabilities(images).argmax(1) == 1).all()
    maps = heatmaps(model, images, [1] * len(images), method)
    assert maps.shape == (8, SIZE, SIZE)
    q = SIZE // 2
    for i, heatmap in enumerate(maps):
        square = QUADRANTS[i // 2]
        means = quadrant_means(heatmap)
        share = {k: v / sum(means.values()) for k, v in means.items()}
        # the square's quadrant draws the most of the heatmap, clearly more than any other
        assert max(share, key=share.get) == square, (i, share)
        assert share[square] > 0.35 and all(
            share[square] > 1.4 * v for k, v in share.items() if k != square
        ), (
            i,
            share,
        )
        r, c = np.unravel_index(heatmap.argmax(), heatmap.shape)
        assert QUADRANTS[2 * (r >= q) + (c >= q)] == square, (i, (r, c))


def test_predict_explain_writes_an_overlay_per_image(trusted_run, presence_data, tmp_path):
    run, _ = trusted_run
    out = predict(
        run / "checkpoints" / "best.ckpt",
        presence_data / "test",
        tmp_path / "predictions.csv",
        explain=True,
        explain_method="gradcam++",
    )
    rows = list(csv.DictReader(out.open()))
    overlays = sorted((tmp_path / "explanations").rglob("*.png"))
    assert len(rows) == 12 and len(overlays) == 12
    assert list(rows[0]) == ["path", "prediction", "prob_absent", "prob_present", "explanation"]
    for row in rows:
        source = Path(row["path"])
        overlay = Path(row["explanation"])
        relative = source.relative_to(presence_data / "test")
        assert overlay == tmp_path / "explanations" / relative.parent / f"{source.name}.cam.png"
        with Image.open(overlay) as im:
            assert im.mode == "RGB" and im.size == (SIZE, SIZE)  # over the original image, at its size
            assert np.asarray(im).std() > 10
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["explain_method"] == "gradcam++" and settings["images"] == 12


def test_predict_and_eval_decide_with_the_checkpoints_threshold(trusted_run, presence_data, tmp_path):
    run, _ = trusted_run
    best = run / "checkpoints" / "best.ckpt"
    # squares from faint to bright: probabilities of `present` spread between 0 and 1
    faint = tmp_path / "faint"
    faint.mkdir()
    rng = np.random.default_rng(3)
    for i, level in enumerate(range(40, 160, 8)):
        image = presence_image(1, rng, quadrant=i % 4, brightness=(level, level + 8))
        Image.fromarray(image).save(faint / f"level_{level:03d}.png")
    first = list(csv.DictReader(predict(best, faint, tmp_path / "a.csv").open()))
    stored = load_classifier(best).threshold
    for row in first:
        assert row["prediction"] == ("present" if float(row["prob_present"]) >= stored else "absent")

    # a threshold among the probabilities above 0.5: some images the most probable class calls present
    # are now called absent
    above = sorted({float(r["prob_present"]) for r in first if 0.5 < float(r["prob_present"]) < 1})
    assert len(above) >= 2, [r["prob_present"] for r in first]
    threshold = (above[0] + above[1]) / 2
    moved = tmp_path / "moved.ckpt"
    shutil.copy(best, moved)
    add_to_checkpoint(moved, operating_point={"rule": None, "threshold": threshold})
    second = list(csv.DictReader(predict(moved, faint, tmp_path / "b.csv").open()))
    assert [r["prob_present"] for r in second] == [r["prob_present"] for r in first]
    for row in second:
        assert row["prediction"] == ("present" if float(row["prob_present"]) >= threshold else "absent")
    assert any(r["prediction"] == "absent" and float(r["prob_present"]) > 0.5 for r in second)
    assert json.loads((tmp_path / "b.json").read_text())["threshold"] == threshold

    # eval reports the stored threshold and the test split's sensitivity/specificity at it, as predict decides
    metrics = evaluate(
        compose_config("eval", tmp_path / "eval", [f"ckpt_path={moved}", "trainer.accelerator=cpu"])
    )
    rows = list(csv.DictReader(predict(moved, presence_data / "test", tmp_path / "c.csv").open()))
    truth = [Path(r["path"]).parent.name == "present" for r in rows]
    called = [r["prediction"] == "present" for r in rows]
    assert metrics["threshold"] == threshold
    assert metrics["test/sensitivity_at_threshold"] == pytest.approx(
        np.mean([c for c, t in zip(called, truth, strict=True) if t])
    )
    assert metrics["test/specificity_at_threshold"] == pytest.approx(
        np.mean([not c for c, t in zip(called, truth, strict=True) if not t])
    )


@pytest.fixture
def noisy_data(tmp_path) -> Path:
    """val and test with 3 of 10 images per class filed under the wrong class: a model that is sure of
    every image is right on 70 % of them."""
    root = tmp_path / "noisy"
    rng = np.random.default_rng(11)
    write_split(root / "train", 2, rng)
    write_split(root / "val", 10, rng, flipped=3)
    write_split(root / "test", 10, rng, flipped=3)
    return root


def mean_confidence(rows: list[dict]) -> float:
    return float(np.mean([max(float(r["prob_absent"]), float(r["prob_present"])) for r in rows]))


def test_temperature_scaling_fixes_an_overconfident_model_and_eval_and_predict_apply_it(
    trusted_run, noisy_data, tmp_path
):
    run, _ = trusted_run
    raw_ckpt = tmp_path / "raw.ckpt"
    shutil.copy(run / "checkpoints" / "best.ckpt", raw_ckpt)
    add_to_checkpoint(raw_ckpt, operating_point=None)  # decide by the most probable class
    data = ["data=folder", f"data.root={noisy_data}", "data.num_workers=0"]
    raw_cfg = compose_config(
        "eval", tmp_path / "eval_raw", [f"ckpt_path={raw_ckpt}", "trainer.accelerator=cpu", *data]
    )
    model = load_classifier(raw_ckpt)
    logits, targets = model.collect_logits(datamodule_for(model, raw_cfg.data).dataloader("val"))
    confidence = logits.softmax(1).max(1).values
    assert confidence.mean() > 0.9 and (logits.argmax(1) == targets).float().mean() < 0.8  # over-confident

    calibration, _ = fit_on_validation(logits, targets, calibrate=True, rule=None, target_sensitivity=None)
    assert calibration["temperature"] > 2
    assert calibration["val_ece_before"] > 0.15
    assert calibration["val_ece_after"] < calibration["val_ece_before"] / 2
    calibrated_ckpt = tmp_path / "calibrated.ckpt"
    shutil.copy(raw_ckpt, calibrated_ckpt)
    add_to_checkpoint(calibrated_ckpt, calibration=calibration)
    temperature = load_classifier(calibrated_ckpt).temperature
    assert temperature == calibration["temperature"]

    raw = evaluate(raw_cfg)
    calibrated = evaluate(
        compose_config(
            "eval", tmp_path / "eval_cal", [f"ckpt_path={calibrated_ckpt}", "trainer.accelerator=cpu", *data]
        )
    )
    assert "test/ece_calibrated" not in raw
    assert calibrated["test/ece"] == pytest.approx(raw["test/ece"], abs=1e-6)  # the model without temperature
    assert calibrated["test/ece_calibrated"] < raw["test/ece"] / 2
    assert calibrated["test/loss"] < raw["test/loss"]  # the NLL of the calibrated probabilities
    assert calibrated["test/acc"] == raw["test/acc"]
    # same ranking, except that probabilities the raw model saturates at 1.0 tie, and tie no more
    assert calibrated["test/auroc"] == pytest.approx(raw["test/auroc"], abs=0.05)
    assert json.loads((tmp_path / "eval_cal" / "calibration.json").read_text())["temperature"] == temperature

    before = list(csv.DictReader(predict(raw_ckpt, noisy_data / "test", tmp_path / "raw.csv").open()))
    after = list(csv.DictReader(predict(calibrated_ckpt, noisy_data / "test", tmp_path / "cal.csv").open()))
    transform = eval_transform(SIZE, model.preprocessing["mean"], model.preprocessing["std"])
    images = torch.stack(
        [transform(torch.from_numpy(np.asarray(Image.open(r["path"])))[None]) for r in after]
    )
    with torch.no_grad():
        expected = (model(images) / temperature).softmax(1)
    for b, a, p in zip(before, after, expected, strict=True):
        assert a["prediction"] == b["prediction"]
        assert [float(a["prob_absent"]), float(a["prob_present"])] == pytest.approx(p.tolist(), abs=2e-6)
        assert max(float(a["prob_absent"]), float(a["prob_present"])) <= max(
            float(b["prob_absent"]), float(b["prob_present"])
        )
    assert mean_confidence(after) < mean_confidence(before) - 0.1
    assert json.loads((tmp_path / "cal.json").read_text())["temperature"] == temperature


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_heatmaps_equal_a_full_backward_and_leave_the_model_as_it_was(method):
    """The gradient stops at the explained layer (nothing before it is differentiated), which changes no
    value: the maps equal pytorch_grad_cam's on an input that requires grad (a backward through the whole
    network); every parameter keeps its requires_grad and gets no gradient, frozen ones included."""
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from medtransfer.evaluation.explanations import _Logits
    from medtransfer.models.classifier import Classifier

    torch.manual_seed(0)
    model = Classifier(backbone="resnet18", weights=None, num_classes=3, in_channels=1).eval()
    for p in model.backbone.layer1.parameters():  # a frozen group
        p.requires_grad_(False)
    x, classes = torch.randn(4, 1, 32, 32), [0, 1, 2, 1]
    cam_class = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}[method]
    with cam_class(model=_Logits(model), target_layers=[model.explanation_layer]) as cam:
        reference = cam(
            input_tensor=x.clone().requires_grad_(True), targets=[ClassifierOutputTarget(c) for c in classes]
        )
    model.zero_grad(set_to_none=True)
    requires = {n: p.requires_grad for n, p in model.named_parameters()}

    maps = heatmaps(model, x, classes, method)
    np.testing.assert_allclose(maps, reference, rtol=1e-5, atol=1e-6)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == requires
    assert all(p.grad is None for p in model.parameters()) and not model.training
