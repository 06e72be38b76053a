"""Checkpoints are data, runs are durable: atomic writes that survive a full disk, damaged and
pickled checkpoints refused with a message, lean best.ckpt, one run per directory, sweeps re-run safely."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY_CLI, run_train_cli
from medtransfer.models.backbone import build_backbone
from medtransfer.models.checkpoint import add_to_checkpoint, load_classifier
from medtransfer.report import collect
from medtransfer.train import build_data, build_model, build_trainer, resume_arguments, train
from medtransfer.utils import checkpoint_io
from medtransfer.utils.atomic_write import atomic_open, atomic_write_json
from medtransfer.utils.checkpoint_io import AtomicCheckpointIO, load_checkpoint_file
from medtransfer.utils.errors import ConfigError
from medtransfer.utils.run_lock import LOCK_NAME, OWNER_ENV, RunDirInUseError, run_dir_lock
from medtransfer.utils.run_status import run_job
from medtransfer.utils.sweep_jobs import earlier_outcome

TESTS = Path(__file__).parent
FAST = ("callbacks.test_report.bootstrap_samples=0", "callbacks.explanations.images=0")


def env_with_tests() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


# ------------------------------------------------------------------ atomic writes


def test_a_failed_write_leaves_the_previous_file(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(OSError, match="No space left"), atomic_open(target, "w") as f:
        f.write('{"a": 2, "half')
        raise OSError(errno.ENOSPC, "No space left on device")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left


def test_disk_full_while_writing_last_ckpt_keeps_the_previous_one(train_config, monkeypatch):
    cfg = train_config("trainer.max_epochs=2", "test=false", *FAST)
    run = Path(cfg.paths.output_dir)
    real_write = checkpoint_io.atomic_write_with
    writes = []

    def disk_full_on_second_last(path, write):
        writes.append(Path(path).name)
        if writes.count("last.ckpt") == 2:  # epoch 1: part of the file, then the disk is full
            with atomic_open(path, "wb") as f:
                write(f)
                f.truncate(f.tell() // 2)
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, write)

    monkeypatch.setattr(checkpoint_io, "atomic_write_with", disk_full_on_second_last)
    with pytest.raises(SystemExit) as exit_info:
        run_job(lambda: train(cfg), run)
    assert exit_info.value.code == 2  # a user error: a short message, no traceback

    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed"
    assert "last.ckpt" in status["error"] and "No space left" in status["error"]
    previous = load_checkpoint_file(run / "checkpoints" / "last.ckpt")
    assert previous["epoch"] == 0 and "optimizer_states" in previous
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def checkpoint_writes(cfg) -> tuple[list[str], object]:
    """The files the Trainer's checkpoint plugin wrote during a fit of `cfg`, in order, and the trainer."""
    datamodule = build_data(cfg)
    model = build_model(cfg, datamodule)
    trainer = build_trainer(cfg, model)
    trainer.fit(model, datamodule=datamodule)
    return [Path(path).name for path, _ in trainer.strategy.checkpoint_io.writes], trainer


def test_last_ckpt_waits_min_interval_and_best_ckpt_waits_for_it(train_config):
    cfg = train_config("trainer.max_epochs=3", "callbacks.last_checkpoint.min_interval_s=3600", *FAST)
    writes, trainer = checkpoint_writes(cfg)
    assert writes == ["best.ckpt", "last.ckpt"]  # once each, at the end of training: best first
    last = load_checkpoint_file(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    best = load_checkpoint_file(trainer.checkpoint_callback.best_model_path)
    assert last["global_step"] == trainer.global_step and "optimizer_states" in last  # the end of training
    assert "optimizer_states" not in best and best["epoch"] <= 2
    # the threshold fitted on validation went into the held best.ckpt before it was written
    assert (
        best["medtransfer"]["operating_point"]["threshold"]
        == trainer.lightning_module.operating_point["threshold"]
    )
    # resuming from it trains nothing more
    datamodule = build_data(cfg)
    model = build_model(cfg, datamodule)
    again = build_trainer(cfg, model)
    again.fit(
        model, datamodule=datamodule, ckpt_path=Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    )
    assert again.global_step == trainer.global_step and again.current_epoch == trainer.current_epoch


def test_min_interval_zero_writes_last_ckpt_every_epoch_after_the_best(train_config):
    cfg = train_config("trainer.max_epochs=3", "callbacks.last_checkpoint.min_interval_s=0", *FAST)
    writes, _ = checkpoint_writes(cfg)
    assert writes.count("last.ckpt") == 3
    # a best.ckpt is never written after the last.ckpt of its epoch: the files on disk always agree
    for i, name in enumerate(writes):
        if name == "best.ckpt":
            assert writes[i + 1] == "last.ckpt"


def test_without_last_ckpt_the_best_is_written_when_the_fit_ends(train_config):
    cfg = train_config("trainer.max_epochs=2", "callbacks.last_checkpoint=null", *FAST)
    writes, trainer = checkpoint_writes(cfg)
    assert writes == ["best.ckpt"]
    assert Path(trainer.checkpoint_callback.best_model_path).is_file()


def test_a_truncated_checkpoint_is_named_with_the_last_good_one(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- trainer.max_epochs=2\n")
    checkpoints = run / "checkpoints"
    checkpoints.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(100)}}, checkpoints / "best.ckpt")
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, checkpoints / "last.ckpt")
    data = (checkpoints / "last.ckpt").read_bytes()
    (checkpoints / "last.ckpt").write_bytes(data[: len(data) // 2])

    for load in (
        lambda: load_checkpoint_file(checkpoints / "last.ckpt"),
        lambda: AtomicCheckpointIO().load_checkpoint(checkpoints / "last.ckpt"),  # trainer.fit(ckpt_path=)
        lambda: resume_arguments(run),
    ):
        with pytest.raises(ConfigError, match=r"last\.ckpt is damaged: not a complete archive") as err:
            load()
        assert f"model.weights={checkpoints / 'best.ckpt'}" in str(err.value)


# ------------------------------------------------------------------ checkpoints are data


class Payload:
    """Unpickling it runs code: it writes a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_a_pickle_payload_is_refused_on_every_load_path(tmp_path, monkeypatch, train_config):
    marker = tmp_path / "pwned"
    payload = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload(marker)}}, payload)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    torch.load(payload, map_location="cpu")  # the payload is live: the variable makes torch unpickle it
    assert marker.read_text() == "pwned"
    marker.unlink()

    loaders = {
        "eval/predict": lambda: load_classifier(payload),
        "model.weights": lambda: build_backbone("resnet18", weights=str(payload)),
        "resume (CheckpointIO)": lambda: AtomicCheckpointIO().load_checkpoint(payload),
        "add_to_checkpoint": lambda: add_to_checkpoint(payload, operating_point=None),
        "resume (train)": lambda: train(train_config(f"ckpt_path={payload}", *FAST)),
    }
    for name, load in loaders.items():
        with pytest.raises(ConfigError, match="refused") as err:
            load()
        assert str(payload) in str(err.value), name
        assert not marker.exists(), name
        assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"  # restored after each load


def test_best_checkpoint_is_lean_and_still_serves_eval_and_transfer(train_config):
    cfg = train_config("trainer.max_epochs=1", *FAST)
    metrics = train(cfg)
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    best = load_checkpoint_file(checkpoints / "best.ckpt")
    last = load_checkpoint_file(checkpoints / "last.ckpt")
    assert "optimizer_states" not in best and "optimizer_states" in last and "callbacks" in last
    assert best["medtransfer"]["operating_point"]["threshold"] == metrics["threshold"]  # fitted into it
    assert (checkpoints / "best.ckpt").stat().st_size < 0.5 * (checkpoints / "last.ckpt").stat().st_size
    # the Grad-CAM layer is the backbone's last block registered twice: its weights are stored once
    weights = best["state_dict"]
    shared = weights["explanation_layer.conv1.weight"], weights["backbone.layer4.1.conv1.weight"]
    assert shared[0].untyped_storage().data_ptr() == shared[1].untyped_storage().data_ptr()
    stored = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in weights.values()}
    assert (checkpoints / "best.ckpt").stat().st_size < 1.05 * sum(stored.values())
    assert load_classifier(checkpoints / "best.ckpt").threshold == metrics["threshold"]
    build_backbone("resnet18", weights=str(checkpoints / "best.ckpt"), in_channels=1)  # model.weights=


# ------------------------------------------------------------------ one run per directory


def hold_lock_in_subprocess(directory: Path) -> subprocess.Popen:
    code = (
        "import sys, time\n"
        "from medtransfer.utils.run_lock import run_dir_lock\n"
        "with run_dir_lock(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(directory)], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_locked_dir_is_refused_and_a_dead_owners_lock_is_taken_over(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(OWNER_ENV, raising=False)
    proc = hold_lock_in_subprocess(tmp_path)
    try:
        with (
            pytest.raises(RunDirInUseError, match=f"in use by another run: pid {proc.pid}"),
            run_dir_lock(tmp_path),
        ):
            pass
        monkeypatch.setenv(OWNER_ENV, json.loads((tmp_path / LOCK_NAME).read_text())["owner"])
        with run_dir_lock(tmp_path):  # a child of the owner (a DDP rank): re-entrant
            pass
        assert (tmp_path / LOCK_NAME).is_file()  # and the child did not release it
        monkeypatch.delenv(OWNER_ENV)
    finally:
        proc.send_signal(signal.SIGKILL)  # dies holding it: the lock file stays, stale
        proc.wait()
    with run_dir_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert "took over the lock" in " ".join(capsys.readouterr().out.split())
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.slow
def test_a_second_run_into_a_running_runs_dir_stops_at_once(tmp_path, npz_file):
    marks = tmp_path / "marks"
    marks.mkdir()
    first = [
        sys.executable,
        "-m",
        "medtransfer.train",
        "data=medmnist",
        f"data.path={npz_file}",
        *TINY_CLI,
        *FAST,
        f"paths.log_dir={tmp_path / 'outputs'}",
        "hydra.run.dir=outputs/run",
        # the first run holds after its first batch until the second run has been refused
        "+callbacks.hold._target_=probe.HoldUntilReleased",
        f"+callbacks.hold.out_dir={marks}",
        f"+callbacks.hold.release={marks / 'release'}",
    ]
    proc = subprocess.Popen(
        first, env=env_with_tests(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.time() + 300
        while not (marks / "held").exists():
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.1)
        run = tmp_path / "outputs" / "run"
        config = (run / ".hydra" / "config.yaml").read_text()
        config_mtime = (run / ".hydra" / "config.yaml").stat().st_mtime_ns

        second = run_train_cli(tmp_path, npz_file, "hydra.run.dir=outputs/run", "optimizer.lr=0.1")
        assert proc.poll() is None, "the first run should still be running"
        assert second.returncode == 2, second.stdout[-3000:] + second.stderr[-3000:]
        assert "isinusebyanotherrun:pid" in "".join(second.stdout.replace("│", "").split())  # a wrapped panel
        assert (run / ".hydra" / "config.yaml").read_text() == config
        assert (run / ".hydra" / "config.yaml").stat().st_mtime_ns == config_mtime
    finally:
        (marks / "release").touch()

    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert not (run / LOCK_NAME).exists()


# ------------------------------------------------------------------ sweeps re-run safely


def test_earlier_outcome_of_a_sweep_job(tmp_path):
    cfg = OmegaConf.create(
        {"paths": {"output_dir": str(tmp_path)}, "optimized_metric": "val/auroc", "rerun_failed": False}
    )
    assert earlier_outcome(cfg, ["a=1"]) == ("train", None)
    (tmp_path / "status.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    action, value = earlier_outcome(cfg, ["a=1"])
    assert action == "skip" and value != value  # NaN: not run again
    cfg.rerun_failed = True
    assert earlier_outcome(cfg, ["a=1", "rerun_failed=true"]) == ("train", None)
    (tmp_path / "status.json").write_text(json.dumps({"status": "completed", "overrides": ["a=1"]}))
    (tmp_path / "metrics.json").write_text(json.dumps({"val/auroc_best": 0.75}))
    assert earlier_outcome(cfg, ["a=1", "rerun_failed=true"]) == ("skip", 0.75)
    with pytest.raises(ConfigError, match="belongs to another sweep"):
        earlier_outcome(cfg, ["a=2"])


@pytest.mark.slow
def test_an_interrupted_sweep_rerun_skips_done_jobs_and_finishes_the_rest(tmp_path, npz_file):
    sweep = tmp_path / "sweep"
    args = (
        "optimizer.lr=1e-3,2e-3,3e-3,4e-3",
        *FAST,
        f"hydra.sweep.dir={sweep}",
        "+callbacks.stop._target_=probe.InterruptJobOnce",
        "+callbacks.stop.job=2",
        f"+callbacks.stop.out_dir={tmp_path / 'marks'}",
    )
    first = run_train_cli(tmp_path, npz_file, *args, multirun=True)
    assert first.returncode == 130, first.stderr[-3000:]
    rows = {r["job"]: r for r in collect(sweep)}
    assert {j: r["status"] for j, r in rows.items()} == {
        "0": "completed",
        "1": "completed",
        "2": "interrupted",
        "3": "not started",
    }
    assert rows["3"]["optimizer.lr"] == "0.004"  # the grid job that never started
    done = {p: p.stat().st_mtime_ns for j in ("0", "1") for p in (sweep / j / "checkpoints").glob("*.ckpt")}
    assert len(done) == 4

    second = run_train_cli(tmp_path, npz_file, *args, multirun=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in done} == done  # jobs 0 and 1 were not trained again
    assert "job0:completedearlier,nottrainedagain" in "".join(second.stdout.split())
    rows = collect(sweep)
    assert [(r["job"], r["status"]) for r in rows] == [(str(i), "completed") for i in range(4)]
    assert json.loads((sweep / "2" / "metrics.json").read_text())["epochs"] == 1
