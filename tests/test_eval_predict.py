"""Evaluating a checkpoint reproduces the run's test metrics; prediction writes predictions.csv; user
errors exit with a short message and no traceback."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from medtransfer.evaluate import evaluate
from medtransfer.models.checkpoint import load_classifier
from medtransfer.predict import predict
from medtransfer.train import train
from medtransfer.utils.compose import compose_config
from medtransfer.utils.run_status import run_job


@pytest.fixture(scope="module")
def trained_folder_run(tmp_path_factory, folder_tree):
    from conftest import TINY

    out = tmp_path_factory.mktemp("trained") / "run"
    cfg = compose_config(
        "train", out, [*TINY, "data=folder", f"data.root={folder_tree}", "trainer.max_epochs=3"]
    )
    metrics = train(cfg)
    return out, metrics


def test_eval_reproduces_the_runs_test_metrics(trained_folder_run, tmp_path):
    run, metrics = trained_folder_run
    cfg = compose_config(
        "eval",
        tmp_path / "eval",
        [f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", "trainer.accelerator=cpu"],
    )
    results = evaluate(cfg)
    for key in (
        "test/auroc",
        "test/acc",
        "test/f1",
        "test/balanced_acc",
        "test/sensitivity",
        "test/specificity",
        "test/loss",
    ):
        assert results[key] == pytest.approx(metrics[key], abs=1e-6), key
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["test/auroc"] == pytest.approx(metrics["test/auroc"], abs=1e-6)
    assert (tmp_path / "eval" / "confusion_matrix_test.png").stat().st_size > 1000


def test_eval_on_another_split_names_its_metrics(trained_folder_run, tmp_path):
    run, _ = trained_folder_run
    cfg = compose_config(
        "eval",
        tmp_path / "eval",
        [f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", "split=val", "trainer.accelerator=cpu"],
    )
    results = evaluate(cfg)
    assert set(results) >= {"val/auroc", "val/acc"} and not any(k.startswith("test/") for k in results)
    assert (tmp_path / "eval" / "confusion_matrix_val.png").is_file()


def test_predict_writes_class_probabilities(trained_folder_run, folder_tree, tmp_path):
    run, _ = trained_folder_run
    out = predict(run / "checkpoints" / "best.ckpt", folder_tree / "malignant", tmp_path / "predictions.csv")
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 16
    assert list(rows[0]) == ["path", "prediction", "prob_benign", "prob_malignant"]
    threshold = load_classifier(run / "checkpoints" / "best.ckpt").threshold  # chosen on val (Youden's J)
    assert threshold is not None
    for row in rows:
        assert float(row["prob_benign"]) + float(row["prob_malignant"]) == pytest.approx(1.0, abs=1e-5)
        assert row["prediction"] == ("malignant" if float(row["prob_malignant"]) >= threshold else "benign")
    assert sum(r["prediction"] == "malignant" for r in rows) >= 12  # the model learned the square


def test_user_errors_exit_with_a_message_not_a_traceback(tmp_path, capsys):
    from medtransfer.utils.errors import DataError

    def bad():
        raise DataError("data.root=/nowhere: no such folder.")

    with pytest.raises(SystemExit) as exit_info:
        run_job(bad, tmp_path)
    assert exit_info.value.code == 2
    assert "data.root=/nowhere" in capsys.readouterr().out
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed" and "no such folder" in status["error"]


def test_missing_checkpoint_is_a_user_error(tmp_path):
    from medtransfer.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="no such file"):
        predict(tmp_path / "missing.ckpt", tmp_path, tmp_path / "p.csv")


def test_user_error_wrapped_by_hydra_instantiate_is_still_a_short_message(tmp_path, capsys):
    from hydra.utils import instantiate

    def bad():
        instantiate({"_target_": "medtransfer.models.classifier.Classifier", "weights": "IMAGENET9K"})

    with pytest.raises(SystemExit):
        run_job(bad, tmp_path)
    out = capsys.readouterr().out
    assert "model.weights='IMAGENET9K' is not a weight of resnet18" in out and "Traceback" not in out


def test_predict_checks_its_inputs_and_predicts_the_rest(trained_folder_run, folder_tree, tmp_path, caplog):
    """Archive debris is ignored; an unreadable file is listed with its reason (error column,
    predictions.json, a warning) while the others are predicted; a name that is not UTF-8 is written whole."""
    import os
    import shutil
    import struct

    from conftest import write_truncated_png

    run, _ = trained_folder_run
    scans = tmp_path / "new_scans"
    (scans / "__MACOSX").mkdir(parents=True)
    for i, source in enumerate(sorted((folder_tree / "malignant").glob("*.png"))[:3]):
        shutil.copy(source, scans / f"scan{i}.png")
        appledouble = struct.pack(">II16sH", 0x00051607, 0x00020000, b"Mac OS X        ", 0)
        (scans / f"._scan{i}.png").write_bytes(appledouble)
        (scans / "__MACOSX" / f"._scan{i}.png").write_bytes(appledouble)
    write_truncated_png(scans / "broken.png")
    latin1 = os.fsdecode(os.fsencode(scans) + b"/r\xe9sum\xe9.png")
    shutil.copy(scans / "scan0.png", latin1)
    with caplog.at_level("WARNING"):
        out = predict(run / "checkpoints" / "best.ckpt", scans, tmp_path / "predictions.csv")
    with open(out, newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = {row["path"]: row for row in csv.DictReader(f)}
    assert sorted(os.path.basename(p) for p in rows) == sorted(
        ["broken.png", os.path.basename(latin1), "scan0.png", "scan1.png", "scan2.png"]
    )
    broken = rows[str(scans / "broken.png")]
    assert broken["prediction"] == "" and broken["error"].startswith("truncated")
    predicted = [r for p, r in rows.items() if not p.endswith("broken.png")]
    assert all(r["prediction"] and r["error"] == "" for r in predicted)
    assert rows[latin1]["prob_malignant"] == rows[str(scans / "scan0.png")]["prob_malignant"]
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["images"] == 4
    assert [u["path"] for u in settings["unreadable"]] == [str(scans / "broken.png")]
    assert "1 of 5 input file(s) cannot be used" in caplog.text


def test_tta_identity_is_plain_eval_and_two_copies_are_the_checkpoint(trained_folder_run, tmp_path):
    import shutil

    run, _ = trained_folder_run
    best = run / "checkpoints" / "best.ckpt"
    copy = tmp_path / "copy.ckpt"
    shutil.copy(best, copy)

    def run_eval(name, *overrides):
        return evaluate(compose_config("eval", tmp_path / name, [*overrides, "trainer.accelerator=cpu"]))

    plain = run_eval("plain", f"ckpt_path={best}")
    assert run_eval("identity", f"ckpt_path={best}", "tta=[identity]") == plain  # bit for bit
    pair = run_eval("pair", f"ckpt_path=[{best},{copy}]")
    for key in ("test/auroc", "test/acc", "test/balanced_acc", "test/loss"):
        assert pair[key] == pytest.approx(plain[key], abs=1e-5), key
    assert pair["test/uncertainty_mean"] == pytest.approx(0.0, abs=1e-6)
    written = json.loads((tmp_path / "pair" / "metrics.json").read_text())
    assert len(written["members"]) == 2
    flipped = run_eval("tta", f"ckpt_path={best}", "tta=[hflip,vflip,rot90]")
    assert 0 <= flipped["test/auroc"] <= 1 and flipped["test/uncertainty_mean"] > 0


def test_predict_ensemble_with_tta_has_an_uncertainty_column(trained_folder_run, folder_tree, tmp_path):
    import shutil

    run, _ = trained_folder_run
    best = run / "checkpoints" / "best.ckpt"
    shutil.copy(best, tmp_path / "copy.ckpt")
    single = predict(best, folder_tree / "malignant", tmp_path / "single.csv")
    pair = predict([best, tmp_path / "copy.ckpt"], folder_tree / "malignant", tmp_path / "pair.csv")
    one, two = list(csv.DictReader(single.open())), list(csv.DictReader(pair.open()))
    assert list(two[0])[-1] == "uncertainty"
    for a, b in zip(one, two, strict=True):
        assert float(a["prob_malignant"]) == pytest.approx(float(b["prob_malignant"]), abs=1e-6)
        assert float(b["uncertainty"]) == pytest.approx(0.0, abs=1e-6)
    tta = predict(best, folder_tree / "malignant", tmp_path / "tta.csv", tta=["hflip", "rot90"])
    assert all(float(r["uncertainty"]) >= 0 for r in csv.DictReader(tta.open()))


def test_eval_with_a_moved_copy_of_the_training_data(trained_folder_run, folder_tree, tmp_path):
    """`data.root=/moved/copy` changes only the root of the checkpoint's data config; the eval says how
    many images it scored."""
    import shutil

    from medtransfer.evaluate import partial_data_overrides

    run, metrics = trained_folder_run
    moved = shutil.copytree(folder_tree, tmp_path / "moved copy")
    args = partial_data_overrides([f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", f"data.root={moved}"])
    assert args[1] == f"+data.root={moved}"
    assert partial_data_overrides(["data=folder", "data.root=x"]) == ["data=folder", "data.root=x"]
    cfg = compose_config("eval", tmp_path / "eval", [*args, "trainer.accelerator=cpu"])
    results = evaluate(cfg)
    assert results["test/auroc"] == pytest.approx(metrics["test/auroc"], abs=1e-6)  # the same split
    written = json.loads((run / "data_summary.json").read_text())
    assert results["test/images"] == written["totals"]["test"]


def eval_cli(tmp_path, name: str, *args: str) -> tuple[dict, str]:
    """medtransfer-eval as the console runs it (overrides through partial_data_overrides), in process:
    (returned metrics, console output)."""
    import io

    from medtransfer.evaluate import partial_data_overrides
    from medtransfer.utils import console

    out = io.StringIO()
    saved = console.console
    console.console = console.Console(file=out, width=200)
    try:
        cfg = compose_config(
            "eval", tmp_path / name, partial_data_overrides([*args, "trainer.accelerator=cpu"])
        )
        results = evaluate(cfg)
    finally:
        console.console = saved
    return results, out.getvalue()


def no_nan(path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_an_external_folder_is_evaluated_whole(trained_folder_run, tmp_path):
    """An unsplit folder given with data=folder is scored whole (split=auto gives all), its classes matched
    by name, and the console and metrics.json say how many images of each class were scored."""
    from conftest import make_folder_tree

    run, _ = trained_folder_run
    best = run / "checkpoints" / "best.ckpt"
    hospital = make_folder_tree(tmp_path / "hospital_b", per_class=7, seed=5)
    results, printed = eval_cli(tmp_path, "eval", f"ckpt_path={best}", "data=folder", f"data.root={hospital}")
    assert results["all/images"] == 14 and "test/images" not in results
    assert "split=all: 14 images scored, every image of the data given" in printed
    assert "benign 7, malignant 7" in printed
    written = no_nan(tmp_path / "eval" / "metrics.json")
    assert written["split"] == "all" and written["all/images_per_class"] == {"benign": 7, "malignant": 7}
    # the labels are right: accuracy as predict's decisions on the same files give it
    predicted = [
        row["prediction"] == Path(row["path"]).parent.name
        for row in csv.DictReader(predict(best, hospital, tmp_path / "p.csv").open())
    ]
    assert results["all/acc"] == pytest.approx(sum(predicted) / 14, abs=1e-6)
    assert results["all/acc"] >= 0.8  # the model learned the square on these new images too
    assert (tmp_path / "eval" / "confusion_matrix_all.png").is_file()
    md = (tmp_path / "eval" / "per_class_report.md").read_text()
    assert "14 images (split=all)" in md and "n/a" not in md


def test_an_external_set_with_one_class_reports_what_is_defined(trained_folder_run, tmp_path):
    """Only benign images: AUROC and sensitivity are undefined and said to be so (metrics.json `undefined`,
    a warning); specificity and accuracy are reported; the per-class report shows malignant as absent."""
    from conftest import make_folder_tree

    run, _ = trained_folder_run
    best = run / "checkpoints" / "best.ckpt"
    hospital = make_folder_tree(tmp_path / "hospital_c", per_class=6, classes=("benign",), seed=6)
    results, printed = eval_cli(tmp_path, "eval", f"ckpt_path={best}", "data=folder", f"data.root={hospital}")
    assert results["all/images"] == 6
    assert "all/auroc" not in results and "all/sensitivity" not in results
    assert "all/sensitivity_at_threshold" not in results and "all/auroc_ci_low" not in results
    benign = [
        r["prediction"] == "benign"
        for r in csv.DictReader(predict(best, hospital, tmp_path / "p.csv").open())
    ]
    assert results["all/specificity_at_threshold"] == pytest.approx(sum(benign) / 6, abs=1e-6)
    assert results["all/acc"] == pytest.approx(sum(benign) / 6, abs=1e-6)
    assert "no images of malignant" in printed
    written = no_nan(tmp_path / "eval" / "metrics.json")
    assert "AUROC needs images of both classes" in written["undefined"]["all/auroc"]
    rows = {r["class"]: r for r in csv.DictReader((tmp_path / "eval" / "per_class_report.csv").open())}
    assert rows["malignant"]["support"] == "0" and rows["malignant"]["recall"] == "n/a"
    assert int(rows["benign"]["support"]) == 6


def test_an_unknown_class_stops_eval_with_a_message(trained_folder_run, tmp_path, capsys):
    from conftest import make_folder_tree

    run, _ = trained_folder_run
    hospital = make_folder_tree(tmp_path / "h", per_class=2, classes=("benign", "cyst"), seed=7)
    cfg = compose_config(
        "eval",
        tmp_path / "eval",
        [f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", "data=folder", f"data.root={hospital}"],
    )
    with pytest.raises(SystemExit):
        run_job(lambda: evaluate(cfg), tmp_path / "eval")
    out = capsys.readouterr().out
    assert "'cyst'" in out and "'benign', 'malignant'" in out and "Traceback" not in out


def test_split_test_of_an_unsplit_external_folder_says_it_is_a_part(trained_folder_run, tmp_path):
    from conftest import make_folder_tree

    run, _ = trained_folder_run
    hospital = make_folder_tree(tmp_path / "hospital", per_class=10, seed=8)
    args = [f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", "data=folder", f"data.root={hospital}"]
    results, printed = eval_cli(tmp_path, "eval", *args, "split=test")
    assert results["test/images"] == 4
    assert "scores only its test part, 4 of 20 images" in printed and "split=all" in printed


def test_eval_of_the_train_split_does_not_augment(trained_folder_run, tmp_path):
    """The checkpoint's data has augmentation on; eval of split=train scores the images as they are: the
    same logits twice, and no random transform in its loader."""
    from medtransfer.evaluate import datamodule_for

    run, _ = trained_folder_run
    best = run / "checkpoints" / "best.ckpt"
    first, _ = eval_cli(tmp_path, "a", f"ckpt_path={best}", "split=train")
    second, _ = eval_cli(tmp_path, "b", f"ckpt_path={best}", "split=train")
    assert first["train/images"] == second["train/images"] > 0
    assert first["train/loss"] == second["train/loss"] and first["train/auroc"] == second["train/auroc"]
    model = load_classifier(best)
    assert model.hparams.data_config["augment"]  # the training data was augmented
    transform = datamodule_for(model, None).dataloader("train").dataset.transform
    assert not any("Random" in type(t).__name__ for t in transform.transforms)
