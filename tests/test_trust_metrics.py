"""The numbers behind trust in the results, on synthetic scores: temperature scaling, ECE, threshold rules,
bootstrap intervals, the per-class table, and the report of a three-class model (no training needed)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from medtransfer.callbacks.fit_on_validation import FitOnValidation, fit_on_validation
from medtransfer.evaluation.calibration import (
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    scaled_probabilities,
)
from medtransfer.evaluation.confidence_intervals import auroc, bootstrap_intervals, resampled_auroc
from medtransfer.evaluation.operating_point import choose_threshold, rates_at_threshold
from medtransfer.evaluation.per_class_report import per_class_rows
from medtransfer.evaluation.split_report import evaluation_report
from medtransfer.utils.errors import ConfigError


def overconfident_logits(n: int = 600, scale: float = 8.0, seed: int = 0):
    """Two classes; the logit difference is a noisy signal (about 80 % accurate) blown up by `scale`."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 2, (n,), generator=g)
    signal = (2 * targets - 1).float() + 1.2 * torch.randn(n, generator=g)
    return torch.stack([-signal, signal], dim=1) * scale / 2, targets


def test_temperature_scaling_softens_an_overconfident_model_and_lowers_its_ece():
    logits, targets = overconfident_logits()
    before = expected_calibration_error(scaled_probabilities(logits), targets)
    temperature = fit_temperature(logits, targets)
    after = expected_calibration_error(scaled_probabilities(logits, temperature), targets)
    assert temperature > 3  # the logits were multiplied by 8 over a well-calibrated scale (about 1.7)
    assert before > 0.1 and after < before / 3
    # the NLL is at its minimum there: a nudge either way is worse
    nll = lambda t: torch.nn.functional.cross_entropy(logits / t, targets).item()  # noqa: E731
    assert nll(temperature) <= min(nll(temperature * 0.9), nll(temperature * 1.1))
    # argmax unchanged
    assert torch.equal(scaled_probabilities(logits, temperature).argmax(1), logits.argmax(1))


def test_temperature_sharpens_an_underconfident_model():
    logits, targets = overconfident_logits(scale=0.3)
    assert fit_temperature(logits, targets) < 1


def test_reliability_bins_match_torchmetrics_ece():
    logits, targets = overconfident_logits(n=300, scale=3)
    probs = scaled_probabilities(logits)
    bins = reliability_bins(probs, targets)
    share = bins["counts"] / bins["counts"].sum()
    gap = (bins["accuracy"] - bins["confidence"]).abs().nan_to_num(0)
    assert float((share * gap).sum()) == pytest.approx(expected_calibration_error(probs, targets), abs=1e-5)
    assert int(bins["counts"].sum()) == 300


def test_youden_threshold_separates_the_validation_scores_with_a_margin():
    scores = torch.tensor([0.05, 0.2, 0.3, 0.35, 0.6, 0.7, 0.8, 0.9])
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    threshold = choose_threshold(scores, targets, "youden")
    assert threshold == pytest.approx((0.35 + 0.6) / 2)  # halfway between the classes
    assert rates_at_threshold(scores, targets, threshold) == (1.0, 1.0)


def test_youden_threshold_maximises_sensitivity_plus_specificity():
    rng = np.random.default_rng(1)
    targets = torch.from_numpy(rng.integers(0, 2, 400))
    scores = torch.sigmoid(torch.from_numpy(rng.normal(0, 1, 400)) + 1.5 * targets).float()
    threshold = choose_threshold(scores, targets, "youden")
    best_j = sum(rates_at_threshold(scores, targets, threshold)) - 1
    for t in np.linspace(0.01, 0.99, 99):
        assert sum(rates_at_threshold(scores, targets, float(t))) - 1 <= best_j + 1e-9


def test_target_sensitivity_threshold_is_the_highest_that_reaches_it():
    rng = np.random.default_rng(2)
    targets = torch.from_numpy(rng.integers(0, 2, 300))
    scores = torch.sigmoid(torch.from_numpy(rng.normal(0, 1, 300)) + 1.0 * targets).float()
    threshold = choose_threshold(scores, targets, "sensitivity", 0.95)
    sensitivity, specificity = rates_at_threshold(scores, targets, threshold)
    assert sensitivity >= 0.95
    # the next higher validation score as threshold misses the target: no threshold does better
    higher = scores[scores >= threshold].min()
    assert rates_at_threshold(scores, targets, float(higher) + 1e-6)[0] < 0.95
    youden = choose_threshold(scores, targets, "youden")
    assert threshold < youden and specificity < rates_at_threshold(scores, targets, youden)[1]


@pytest.mark.parametrize(
    ("rule", "target", "message"),
    [
        ("sensitivity", 1.5, r"target_sensitivity=1.5: give a fraction between 0 and 1"),
        ("sensitivity", 0.0, r"target_sensitivity=0.0"),
        ("sensitivity", None, r"target_sensitivity=None"),
        ("f1", 0.9, r"threshold_rule='f1': use youden, sensitivity"),
    ],
)
def test_bad_threshold_config_is_a_config_error_before_training(rule, target, message):
    with pytest.raises(ConfigError, match=message):
        FitOnValidation(threshold_rule=rule, target_sensitivity=target)


def test_fit_on_validation_thresholds_the_calibrated_probabilities():
    logits, targets = overconfident_logits(n=400)
    calibration, operating_point = fit_on_validation(logits, targets, True, "sensitivity", 0.9)
    assert calibration["val_ece_after"] < calibration["val_ece_before"]
    probs = scaled_probabilities(logits, calibration["temperature"])
    assert operating_point["rule"] == "sensitivity" and operating_point["target_sensitivity"] == 0.9
    sensitivity, specificity = rates_at_threshold(probs[:, 1], targets, operating_point["threshold"])
    assert sensitivity >= 0.9
    assert (operating_point["val_sensitivity"], operating_point["val_specificity"]) == (
        sensitivity,
        specificity,
    )
    # several classes: a temperature but no threshold
    three = torch.randn(50, 3)
    calibration, operating_point = fit_on_validation(three, torch.randint(0, 3, (50,)), True, "youden", None)
    assert calibration is not None and operating_point is None


@pytest.mark.parametrize("num_classes", [2, 3])
def test_resampled_auroc_equals_torchmetrics_on_the_resampled_images(num_classes):
    g = torch.Generator().manual_seed(num_classes)
    targets = torch.arange(40) % num_classes
    # rounded scores: ties within and across classes, as in real outputs
    probs = (torch.randn(40, num_classes, generator=g) + torch.nn.functional.one_hot(targets)).softmax(1)
    probs = (probs * 10).round() / 10
    draws = torch.randint(0, 40, (30, 40), generator=g)
    counts = torch.zeros(30, 40, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(30, 40, dtype=torch.float64)
    )
    fast = resampled_auroc(probs, targets, counts)
    for row, idx in zip(fast, draws, strict=True):
        if torch.bincount(targets[idx], minlength=num_classes).min() == 0:
            assert torch.isnan(row)
        else:
            assert float(row) == pytest.approx(auroc(probs[idx], targets[idx]), abs=1e-6)


def test_bootstrap_intervals_are_seeded_and_bracket_the_estimate():
    logits, targets = overconfident_logits(n=300, scale=1)
    probs = scaled_probabilities(logits)
    intervals = bootstrap_intervals(probs, targets, samples=500, seed=3)
    again = bootstrap_intervals(probs, targets, samples=500, seed=3)
    assert intervals == again
    low, high = intervals["auroc"]
    assert low < auroc(probs, targets) < high and 0.02 < high - low < 0.2
    acc = float((probs.argmax(1) == targets).float().mean())
    assert intervals["acc"][0] < acc < intervals["acc"][1]
    # ten times the images: a much narrower interval
    logits_big, targets_big = overconfident_logits(n=3000, scale=1, seed=5)
    big = bootstrap_intervals(scaled_probabilities(logits_big), targets_big, samples=500, seed=3)
    assert big["auroc"][1] - big["auroc"][0] < (high - low) / 2
    assert bootstrap_intervals(probs, targets, samples=0) == {}


def test_per_class_rows_count_precision_recall_f1_and_the_confusion_matrix():
    targets = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    predicted = [0, 0, 1, 2, 1, 1, 2, 2, 2, 0]
    rows = per_class_rows(predicted, targets, ["a", "b", "c"])
    a, b, c = rows
    assert a["support"] == 4 and a["recall"] == pytest.approx(0.5) and a["precision"] == pytest.approx(2 / 3)
    assert a["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert b["precision"] == pytest.approx(2 / 3) and b["recall"] == 1.0
    assert c["recall"] == pytest.approx(0.75)
    assert [a["predicted a"], a["predicted b"], a["predicted c"]] == [2, 1, 1]
    assert [c["predicted a"], c["predicted b"], c["predicted c"]] == [1, 0, 3]


def test_report_of_a_three_class_model_has_no_threshold_and_no_roc(tmp_path):
    from medtransfer.models.classifier import Classifier

    model = Classifier(num_classes=3, class_names=["x", "y", "z"], image_size=16)
    g = torch.Generator().manual_seed(0)
    targets = torch.arange(60) % 3
    logits = 3 * torch.nn.functional.one_hot(targets, 3).float() + torch.randn(60, 3, generator=g)
    metrics = evaluation_report(model, logits, targets, "test", tmp_path, bootstrap_samples=200)
    assert set(metrics) == {
        "test/ece",
        "test/auroc_ci_low",
        "test/auroc_ci_high",
        "test/acc_ci_low",
        "test/acc_ci_high",
    }
    assert (tmp_path / "reliability_diagram.png").stat().st_size > 1000
    assert not (tmp_path / "roc_curve.png").exists() and not (tmp_path / "pr_curve.png").exists()
    rows = list(csv.DictReader((tmp_path / "per_class_report.csv").open()))
    assert [r["class"] for r in rows] == ["x", "y", "z"]
    assert sum(int(r["support"]) for r in rows) == 60
    expected = per_class_rows(logits.argmax(1).numpy(), targets.numpy(), ["x", "y", "z"])
    assert [float(r["recall"]) for r in rows] == pytest.approx([e["recall"] for e in expected], abs=1e-4)
    markdown = (tmp_path / "per_class_report.md").read_text()
    assert "| class | precision | recall | f1 | support | predicted x |" in markdown
    assert "the class with the highest probability" in markdown
