"""Sweeps and scale, end to end through the real command line: grid and Optuna sweeps, a failing job,
DDP inside a multirun, submitit's local launcher, SIGTERM and resume, the report and the notebook."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_CLI, TRAIN_COMMAND, run_train_cli
from medtransfer.report import collect

pytestmark = pytest.mark.slow
TESTS = Path(__file__).parent


def cli(
    tmp_path: Path, npz: Path, *args: str, timeout: int = 500, multirun: bool = True
) -> subprocess.CompletedProcess:
    return run_train_cli(tmp_path, npz, *args, multirun=multirun, timeout=timeout)


def sweep_dirs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "outputs" / "train" / "multiruns").iterdir())


def statuses(sweep: Path) -> dict[str, str]:
    return {p.parent.name: json.loads(p.read_text())["status"] for p in sweep.glob("*/status.json")}


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory, npz_file) -> Path:
    """A 2×2 grid (freezing strategy × lr), 2 epochs per job; shared by the report and notebook tests."""
    tmp_path = tmp_path_factory.mktemp("grid")
    result = cli(
        tmp_path, npz_file, "finetune=full,linear_probe", "optimizer.lr=1e-3,1e-2", "trainer.max_epochs=2"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [sweep] = sweep_dirs(tmp_path)
    return sweep


def test_grid_sweep_completes_and_reports(grid_sweep):
    sweep = grid_sweep
    assert statuses(sweep) == {str(i): "completed" for i in range(4)}
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert {(r["finetune"], float(r["optimizer.lr"])) for r in rows} == {
        (f, lr) for f in ("full", "linear_probe") for lr in (1e-3, 1e-2)
    }
    assert all(float(r["test/auroc"]) >= 0 for r in rows)
    assert (sweep / "report.png").stat().st_size > 5000 and "| job |" in (sweep / "report.md").read_text()
    for job in sweep.iterdir():  # sibling TensorBoard runs under one logdir
        if job.name.isdigit():  # (one folder deeper since runs are named by their overrides: rglob)
            assert any((job / "tensorboard").rglob("events.out.tfevents.*"))


def test_sweep_runs_in_tensorboard_are_named_by_their_overrides(grid_sweep):
    """`tensorboard --logdir <sweep dir>`: four runs named by what differs, one event file each, HPARAMS
    with the swept keys first and the real best metric, per-step lr scalars of every layer group."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import plugin_data_pb2

    names = {f"finetune={f},optimizer.lr={lr}" for f in ("full", "linear_probe") for lr in ("0.001", "0.01")}
    multiplexer = EventMultiplexer(size_guidance={"scalars": 0})
    multiplexer.AddRunsFromDirectory(str(grid_sweep))
    multiplexer.Reload()
    runs = multiplexer.Runs()
    assert {run.split("/")[-1] for run in runs} == names and len(runs) == 4
    for run in runs:
        job = grid_sweep / run.split("/")[0]
        assert len(list((grid_sweep / run).glob("events.out.tfevents.*"))) == 1  # one event file per run
        assert json.loads((job / "run_name.json").read_text())["name"] == run.split("/")[-1]
        acc = multiplexer.GetAccumulator(run)
        plugin = acc.PluginTagToContent("hparams")
        exp = plugin_data_pb2.HParamsPluginData.FromString(plugin["_hparams_/experiment"]).experiment
        hparams = [(h.name, h.differs) for h in exp.hparam_infos]
        assert hparams[:2] == [("finetune", True), ("optimizer.lr", True)]
        assert [h for h, _ in hparams[2:]] == [
            "model.backbone", "model.weights", "data.batch_size", "data.image_size", "trainer.max_epochs", "seed"
        ]  # fmt: skip
        assert [m.name.tag for m in exp.metric_infos][:2] == ["val/auroc_best", "test/auroc"]
        assert {"test/auroc_ci_low", "test/auroc_ci_high"} <= {m.name.tag for m in exp.metric_infos}
        best = json.loads((job / "metrics.json").read_text())["val/auroc_best"]
        assert acc.Scalars("val/auroc_best")[-1].value == pytest.approx(best)
        scalars = set(acc.Tags()["scalars"])
        groups = {"stem", "layer1", "layer2", "layer3", "layer4", "head"}
        assert {f"lr/{g}" for g in groups} <= scalars and len(acc.Scalars("lr/head")) >= 6  # per step
        assert len(acc.Scalars("train/loss_step")) >= 6 and len(acc.Scalars("val/auroc")) == 2
    summary = (grid_sweep / "report.md").read_text()  # rows labelled by their overrides, the best marked
    assert "finetune=full,optimizer.lr=" in summary and "★" in summary and "[" in summary


def test_failing_job_does_not_stop_the_sweep(tmp_path, npz_file):
    result = cli(tmp_path, npz_file, "model.backbone=resnet18,resnet_typo")
    assert result.returncode == 1  # the sweep says a job failed
    [sweep] = sweep_dirs(tmp_path)
    assert statuses(sweep) == {"0": "completed", "1": "failed"}
    failed = json.loads((sweep / "1" / "status.json").read_text())
    assert "resnet_typo" in failed["error"] and Path(failed["traceback"]).is_file()
    report = {r["job"]: r for r in collect(sweep)}
    assert report["1"]["status"] == "failed" and report["0"]["status"] == "completed"


def test_optuna_sweep_runs_three_trials(tmp_path, npz_file):
    result = cli(
        tmp_path,
        npz_file,
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [sweep] = sweep_dirs(tmp_path)
    assert statuses(sweep) == {"0": "completed", "1": "completed", "2": "completed"}
    best = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in best and "optimizer.lr" in best


def test_ddp_jobs_in_a_multirun_one_run_dir_each_and_match_one_process(tmp_path, npz_file):
    result = cli(
        tmp_path,
        npz_file,
        "trainer.strategy=ddp",
        "trainer.devices=1,2",
        "data.batch_size=16",
        "trainer.max_epochs=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [sweep] = sweep_dirs(tmp_path)  # rank 1 walked no sweep of its own
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1"]
    one, two = (json.loads((sweep / j / "metrics.json").read_text()) for j in jobs)
    assert abs(one["test/auroc"] - two["test/auroc"]) < 0.15 and abs(one["test/acc"] - two["test/acc"]) < 0.2
    assert (sweep / "1" / "train_ddp_process_1.log").is_file()  # rank 1 ran inside job 1's run dir


def test_local_processes_launcher_runs_two_jobs(tmp_path, npz_file):
    result = cli(tmp_path, npz_file, "hydra/launcher=local_processes", "finetune=full,linear_probe")
    assert result.returncode == 0, result.stderr[-3000:]
    [sweep] = sweep_dirs(tmp_path)
    assert statuses(sweep) == {"0": "completed", "1": "completed"}


def test_sigterm_mid_epoch_saves_and_resume_finishes(tmp_path, npz_file):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    marks = tmp_path / "marks"
    cmd = [
        sys.executable,
        "-m",
        "medtransfer.train",
        "data=medmnist",
        f"data.path={npz_file}",
        *TINY_CLI,
        "trainer.max_epochs=3",
        f"paths.log_dir={tmp_path / 'outputs'}",
        "hydra.run.dir=outputs/run",
        "+callbacks.slow._target_=probe.SlowBatches",
        "+callbacks.slow.seconds=0.3",
        f"+callbacks.slow.out_dir={marks}",
    ]
    proc = subprocess.Popen(
        cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 300
    while not (marks / "epoch1_batch2").exists():
        assert proc.poll() is None and time.time() < deadline, (
            proc.stdout.read()[-3000:] if proc.stdout else ""
        )
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    run = tmp_path / "outputs" / "run"
    assert proc.returncode == 143, out[-3000:]
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    import torch

    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 1 and saved["global_step"] > 6  # mid-epoch 1: nothing trained was lost

    resumed = subprocess.run(
        [*TRAIN_COMMAND, f"resume={run}"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 3
    assert (
        len(list((run / "tensorboard").glob("events.out.tfevents.*"))) >= 2
    )  # the same TensorBoard run, continued

    # the same run uninterrupted (in this process: the command line is not what it compares)
    from medtransfer.train import train
    from medtransfer.utils.compose import compose_config

    fresh = compose_config(
        "train",
        tmp_path / "fresh",
        ["data=medmnist", f"data.path={npz_file}", *TINY_CLI, "trainer.max_epochs=3"],
    )
    train(fresh)
    uninterrupted = json.loads((tmp_path / "fresh" / "metrics.json").read_text())
    assert abs(metrics["test/auroc"] - uninterrupted["test/auroc"]) < 0.1
    assert abs(metrics["test/acc"] - uninterrupted["test/acc"]) < 0.15


def test_resume_of_a_dir_without_checkpoint_is_a_clear_error(tmp_path):
    env = {**os.environ, "COLUMNS": "400"}  # one line per sentence in the Rich panel
    result = subprocess.run(
        [*TRAIN_COMMAND, f"resume={tmp_path}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "no .hydra/overrides.yaml" in result.stdout


def test_notebook_executes_against_a_tiny_sweep(grid_sweep):
    import nbformat
    from nbclient import NotebookClient

    sweep = grid_sweep
    notebook = Path(__file__).parents[1] / "notebooks" / "compare_runs.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    assert all(
        not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"
    )  # saved without outputs
    os.environ["MEDTRANSFER_SWEEP_DIR"] = str(sweep)
    try:
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(notebook.parent)}}
        ).execute()
    finally:
        del os.environ["MEDTRANSFER_SWEEP_DIR"]
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "4 jobs" in text and "optimizer.lr" in text and "finetune" in text
