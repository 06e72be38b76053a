"""The command line: a value Hydra cannot parse (a path holding `=`, parentheses or brackets) gets
medtransfer's message with the quoted form that works, before Hydra starts; the quoted form does work;
the data summary shows the image size the network sees."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser

from medtransfer.train import resume_arguments
from medtransfer.utils.command_line import check_overrides, quoted_override
from medtransfer.utils.console import console, print_data_summary
from medtransfer.utils.errors import ConfigError

AWKWARD = [
    "/runs/checkpoints/epoch=3-step=120.ckpt",
    "/data/Chest X-Ray (2)",
    "/data/scan[1].png",
    "/data/a,b",
    "/data/it's",
    '/data/say "hi"',
    "/data/both ' and \"",
]


@pytest.mark.parametrize("value", AWKWARD)
def test_a_quoted_override_reads_back_as_the_same_string(value):
    [override] = OverridesParser.create().parse_overrides([quoted_override("data.root", value)])
    assert override.key_or_group == "data.root" and override.value() == value


def test_an_unparsable_value_names_the_quoted_form():
    with pytest.raises(ConfigError) as err:
        check_overrides(["trainer.max_epochs=1", "ckpt_path=/runs/epoch=3-step=120.ckpt"])
    assert "ckpt_path: Hydra cannot read the value '/runs/epoch=3-step=120.ckpt'" in str(err.value)
    assert """'ckpt_path="/runs/epoch=3-step=120.ckpt"'""" in str(err.value)
    check_overrides(['ckpt_path="/runs/epoch=3-step=120.ckpt"', "optimizer.lr=1e-3,1e-2"])  # fine


def command(module: str, *args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"medtransfer.{module}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_each_hydra_command_answers_with_the_quoted_form(tmp_path):
    ckpt = tmp_path / "epoch=3-step=120.ckpt"
    for module, extra in (("evaluate", []), ("predict", ["input=x"]), ("train", [])):
        result = command(module, f"ckpt_path={ckpt}", *extra, cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
        assert f"""'ckpt_path="{ckpt}"'""" in result.stdout
    # the quoted form reaches medtransfer: the (missing) file is named whole
    result = command("evaluate", f'ckpt_path="{ckpt}"', f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert result.returncode == 2 and "epoch=3-step=120.ckpt: no such file" in result.stdout


def test_resume_quotes_a_run_dir_with_awkward_characters(tmp_path):
    run = tmp_path / "lr=1e-3 (retry)"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("- data=folder\n")
    torch.save({"state_dict": {}}, run / "checkpoints" / "last.ckpt")  # an intact (if empty) checkpoint
    arguments = resume_arguments(run)
    check_overrides(arguments)
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(arguments)}
    assert parsed["ckpt_path"] == str(run / "checkpoints" / "last.ckpt")
    assert parsed["hydra.run.dir"] == str(run)


def test_the_data_summary_shows_the_network_input_size():
    summary = {
        "classes": ["a", "b"],
        "counts": {"train": {"a": 3, "b": 3}},
        "totals": {"train": 6},
        "class_weights": {"a": 1.0, "b": 1.0},
        "channels": 1,
        "image_size": 28,
        "original_sizes": {"height": [64, 64], "width": [64, 64]},
    }
    with console.capture() as captured:
        print_data_summary(summary)
    assert "28×28 px (images resized to it)" in captured.get()


def test_an_experiments_data_values_meet_the_data_source_chosen_on_the_command_line(tmp_path):
    """data=folder experiment=pneumonia: the preset's MedMNIST-only values (name, size, class_names) are
    left out, not handed to the folder source; those it takes (image_size) are used and said to be; what
    the user set (batch_size) is the user's."""
    missing = tmp_path / "no_images"
    result = command(
        "train",
        "data=folder",
        "experiment=pneumonia",
        f"data.root={missing}",
        "data.batch_size=4",
        "print_config=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    out = " ".join(result.stdout.replace("│", " ").split())
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-2000:]
    assert "experiment=pneumonia sets data values for data=medmnist; the data is data=folder" in out
    assert (
        "not used (data=folder has no such option): data.class_names=['normal', 'pneumonia'], "
        "data.name=pneumoniamnist, data.size=28" in out
    )
    assert "taken from the experiment: data.image_size=28;" in out and "batch_size" not in out
    # the folder source was built (no unexpected `name`): the run stops on the missing folder
    assert result.returncode == 2 and f"data.root={missing}: no such folder" in out


def test_reconcile_experiment_data_keeps_the_chosen_sources_options():
    from omegaconf import OmegaConf

    from medtransfer.utils.command_line import reconcile_experiment_data

    data = OmegaConf.create({"root": "x", "image_size": 28, "batch_size": 16, "name": "pneumoniamnist"})
    preset = OmegaConf.create({"image_size": 28, "batch_size": 128, "name": "pneumoniamnist"})
    message = reconcile_experiment_data(
        data, "pneumonia", preset, "medmnist", "folder", {"root", "image_size", "batch_size"}, {"batch_size"}
    )
    assert "name" not in data and data.image_size == 28 and data.batch_size == 16
    assert "data.name=pneumoniamnist" in message and "data.image_size=28" in message
    assert "batch_size" not in message
    # the experiment's own source: nothing to say, nothing removed
    assert reconcile_experiment_data(data, "pneumonia", preset, "folder", "folder", set(), set()) is None


@pytest.mark.parametrize(
    ("command", "missing"),
    [("medtransfer.evaluate", "ckpt_path"), ("medtransfer.predict", "input")],
)
def test_a_required_setting_left_out_is_named_without_a_traceback(tmp_path, command, missing):
    args = (
        ["trainer.accelerator=cpu"]
        if command.endswith("evaluate")
        else [f"ckpt_path={tmp_path / 'best.ckpt'}"]
    )
    done = subprocess.run(
        [sys.executable, "-m", command, *args, f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-2000:]
    assert f"{missing} is required and was not given" in output and f"e.g. {missing}=" in output
    assert "Traceback" not in output
