"""Sweeps and small batches: a diverging trial does not end an Optuna sweep (it is a failed trial, its
status.json says why and the report lists it); trainer=ddp on a CPU machine runs with sync_batchnorm off,
saying so; a last training batch of one image is dropped instead of crashing BatchNorm."""

from __future__ import annotations

import json
import logging
import math
import re

import pytest
from omegaconf import OmegaConf

from conftest import make_npz, run_train_cli
from medtransfer.data.datamodule import MedicalImageDataModule
from medtransfer.train import train
from medtransfer.utils.distributed import cpu_sync_batchnorm
from medtransfer.utils.run_status import sweep_objective

SEARCH_SPACE = """# @package _global_
defaults:
  - override /hydra/sweeper: optuna
  - override /hydra/sweeper/sampler: tpe
optimized_metric: val/auroc
hydra:
  sweeper:
    direction: maximize
    study_name: diverge
    storage: null
    n_trials: 2
    n_jobs: 1
    max_failure_rate: 1.0
    sampler:
      seed: 0  # trial 0 draws lr=1e6 (diverges), trial 1 lr=1e-3
      n_startup_trials: 2
    params:
      optimizer.lr: choice(1e-3, 1e6)
"""


def test_a_job_hands_the_sweeper_a_number_or_none(tmp_path):
    assert sweep_objective(0.75, tmp_path) == 0.75
    assert sweep_objective(float("nan"), tmp_path) is None
    assert sweep_objective(math.inf, tmp_path) is None
    assert sweep_objective(None, tmp_path) is None


@pytest.mark.slow
def test_a_diverging_trial_does_not_end_an_optuna_sweep(tmp_path, npz_file):
    conf = tmp_path / "conf" / "hparams_search"
    conf.mkdir(parents=True)
    (conf / "diverge.yaml").write_text(SEARCH_SPACE)
    result = run_train_cli(
        tmp_path,
        npz_file,
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        "hparams_search=diverge",
        multirun=True,
    )
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 1  # the sweep ran to its end and says a job failed
    [sweep] = list((tmp_path / "outputs" / "train" / "multiruns").iterdir())
    status = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/status.json")}
    assert sorted(s["status"] for s in status.values()) == ["completed", "failed"]
    [failed] = [s for s in status.values() if s["status"] == "failed"]
    assert "NonFiniteLossError" in failed["error"]
    assert "best_params" in (sweep / "optimization_results.yaml").read_text()
    report = (sweep / "report.md").read_text()
    assert "Jobs without a result:" in report and "(failed): NonFiniteLossError" in report


def test_sync_batchnorm_is_turned_off_on_the_cpu_loudly(capsys):
    cfg = OmegaConf.create({"accelerator": "cpu", "sync_batchnorm": True, "strategy": "ddp"})
    assert cpu_sync_batchnorm(cfg) == {"sync_batchnorm": False}
    assert "trainer.sync_batchnorm=true needs GPUs" in capsys.readouterr().out
    assert cpu_sync_batchnorm(OmegaConf.create({"accelerator": "cpu", "sync_batchnorm": False})) == {}


@pytest.mark.slow
def test_trainer_ddp_on_the_cpu_as_its_config_comment_says(tmp_path, npz_file):
    result = run_train_cli(tmp_path, npz_file, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trainer.sync_batchnorm=true needs GPUs" in result.stdout


def test_a_last_batch_of_one_image_is_dropped_not_a_crash(tmp_path, train_config, caplog, monkeypatch):
    npz = make_npz(tmp_path / "odd.npz", sizes=(17, 8, 8))  # 17 = 2 batches of 8 + 1
    model = ["finetune.bn=train"]  # BatchNorm in training mode (an MLP head's BatchNorm1d alike)
    cfg = train_config("trainer.max_epochs=1", *model, data=["data=medmnist", f"data.path={npz}"])
    with caplog.at_level(logging.WARNING):
        metrics = train(cfg)
    assert metrics["epochs"] == 1
    assert "leave a last batch of 1 image" in caplog.text
    # without the drop, BatchNorm in training mode fails on the batch of one
    monkeypatch.setattr(MedicalImageDataModule, "drop_single_last_batch", lambda self: False)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        train(train_config("trainer.max_epochs=1", *model, data=["data=medmnist", f"data.path={npz}"]))


ALL_FAIL = """# @package _global_
defaults:
  - override /hydra/sweeper: optuna
  - override /hydra/sweeper/sampler: {sampler}
optimized_metric: val/auroc
hydra:
  sweeper:
    direction: maximize
    study_name: all_fail
    storage: null
    n_trials: 2
    n_jobs: 1
    max_failure_rate: 1.0
    params:
      data.sampler: choice(bogus1, bogus2)  # every trial fails at once (a ConfigError)
"""


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["tpe", "grid"])
def test_an_optuna_sweep_whose_trials_all_fail_ends_with_a_message(tmp_path, npz_file, sampler):
    """No trial completed (TPE: Optuna has no best trial) or the grid's last trial failed (Optuna stops the
    study while telling the failure): the sweep still ends as one with failed jobs does, with its report,
    the failed trials and their status.json named, exit code 1, and no traceback."""
    conf = tmp_path / "conf" / "hparams_search"
    conf.mkdir(parents=True)
    (conf / "all_fail.yaml").write_text(ALL_FAIL.format(sampler=sampler))
    result = run_train_cli(
        tmp_path,
        npz_file,
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        "hparams_search=all_fail",
        multirun=True,
    )
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert result.returncode == 1, output[-3000:]
    [sweep] = list((tmp_path / "outputs" / "train" / "multiruns").iterdir())
    status = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/status.json")}
    assert sorted(status) == ["0", "1"] and all(s["status"] == "failed" for s in status.values())
    flat = re.sub(r"[\s│]", "", output)  # the message panel wraps long lines
    assert "notrialcompleted:all2jobsfailed" in flat and "ConfigError:data.sampler='bogus" in flat
    for job in status:
        assert str(sweep / job / "status.json") in flat
    assert "Jobs without a result:" in (sweep / "report.md").read_text()
