"""`medtransfer-train`: seed → data → model → callbacks, loggers, trainer → fit → fit the temperature and
threshold on the validation split and explain validation images (both at the end of fit, on the best
checkpoint) → test the best checkpoint → test report, metrics.json and TensorBoard HPARAMS → return the
optimized metric (what a sweeper maximizes)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import hydra
import lightning as L
import yaml
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, OmegaConf

from medtransfer.callbacks.confusion_matrix import ConfusionMatrix
from medtransfer.callbacks.explanation_grid import ExplanationGrid
from medtransfer.callbacks.fit_on_validation import FitOnValidation
from medtransfer.callbacks.run_files import RunFiles
from medtransfer.callbacks.sample_images import SampleImages
from medtransfer.callbacks.save_on_interrupt import SaveOnInterrupt
from medtransfer.data.datamodule import MedicalImageDataModule
from medtransfer.evaluation.split_report import evaluation_report, log_scalars, write_decision_settings
from medtransfer.features.datamodule import head_training_data
from medtransfer.finetune.summary import layer_group_rows
from medtransfer.loggers.tensorboard import HParamsTensorBoardLogger
from medtransfer.models.classifier import Classifier
from medtransfer.utils.command_line import check_command_line, quoted_override
from medtransfer.utils.console import (
    print_config,
    print_data_summary,
    print_error,
    print_metrics,
    print_table,
)
from medtransfer.utils.distributed import (
    cpu_sync_batchnorm,
    install_job_subprocess_command,
    per_process_batch_size,
    process_group_per_job,
)
from medtransfer.utils.errors import ConfigError
from medtransfer.utils.paths import CONFIG_DIR, absolute_paths
from medtransfer.utils.run_status import run_job, sweep_objective


def build_data(cfg: DictConfig) -> MedicalImageDataModule:
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def build_model(cfg: DictConfig, datamodule: MedicalImageDataModule) -> Classifier:
    """The classifier sized by the data: class count and names, input channels, class counts."""
    model = instantiate(
        cfg.model,
        num_classes=datamodule.num_classes,
        in_channels=datamodule.num_channels,
        class_names=datamodule.classes,
        class_counts=datamodule.class_counts("train"),
        image_size=datamodule.image_size,
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True) if cfg.get("scheduler") else None,
        finetune=OmegaConf.to_container(cfg.finetune, resolve=True) if cfg.get("finetune") else None,
        monitor=cfg.optimized_metric,
        data_config=absolute_paths(OmegaConf.to_container(cfg.data, resolve=True)),
        _recursive_=False,
    )
    datamodule.set_normalization(model.preprocessing["mean"], model.preprocessing["std"])
    return model


def build_trainer(cfg: DictConfig, model: Classifier, output_dir: Path) -> L.Trainer:
    callbacks = [
        instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c
    ]
    callbacks += [
        ModelCheckpoint(  # best.ckpt: the best value of the optimized metric
            dirpath=output_dir / "checkpoints",
            filename="best",
            monitor=cfg.optimized_metric,
            mode=cfg.model.get("monitor_mode", "max"),
            save_top_k=1,
            enable_version_counter=False,
            auto_insert_metric_name=False,
            save_on_train_epoch_end=True,
        ),
        # last.ckpt: every epoch (Lightning's save_last only follows top-k saves, so it can go stale)
        ModelCheckpoint(
            dirpath=output_dir / "checkpoints", filename="last", save_top_k=1, enable_version_counter=False
        ),
        SaveOnInterrupt(str(output_dir / "checkpoints" / "last.ckpt")),
        RunFiles(str(output_dir)),
        SampleImages(),
        ConfusionMatrix(str(output_dir)),
        # at the end of fit, in this order: temperature and threshold into best.ckpt, then its explanations
        FitOnValidation(
            calibrate=bool(cfg.get("calibrate", False)),
            threshold_rule=(cfg.get("threshold") or {}).get("rule"),
            target_sensitivity=(cfg.get("threshold") or {}).get("target_sensitivity"),
        ),
        ExplanationGrid(
            str(output_dir),
            method=(cfg.get("explain") or {}).get("method", "gradcam"),
            images=(cfg.get("explain") or {}).get("images", 0),
            seed=cfg.get("seed", 0),
        ),
    ]
    loggers = [
        instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg is not None and "_target_" in lg
    ]
    strategy = cfg.trainer.get("strategy", "auto")
    kwargs = {}
    if strategy == "ddp" and not model.strategy.static:
        # layer groups that unfreeze mid-run get no gradient while frozen: DDP must expect unused parameters
        kwargs["strategy"] = DDPStrategy(find_unused_parameters=True)
    kwargs.update(cpu_sync_batchnorm(cfg.trainer))
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **kwargs)


def checkpoint_to_resume(cfg: DictConfig, output_dir: Path) -> str | None:
    """`ckpt_path` when given; for a SLURM job that was requeued (preempted, timed out), its own last.ckpt."""
    if cfg.get("ckpt_path"):
        return str(cfg.ckpt_path)
    last = output_dir / "checkpoints" / "last.ckpt"
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0 and last.is_file():
        return str(last)
    return None


def hparams_for_tensorboard(cfg: DictConfig) -> dict:
    keep = ("model", "data", "finetune", "optimizer", "scheduler", "seed")
    container = OmegaConf.to_container(cfg, resolve=True)
    hp = {k: container[k] for k in keep if k in container}
    hp["trainer"] = {
        k: container["trainer"].get(k) for k in ("max_epochs", "precision", "accumulate_grad_batches")
    }
    return hp


def fitted_on_validation(model: Classifier) -> dict[str, float]:
    """The temperature and threshold fitted after training, as metrics.json keys (numbers only; the rule
    is in operating_point.json)."""
    metrics = {}
    if model.calibration:
        metrics["val/temperature"] = model.calibration["temperature"]
        metrics["val/ece_before"] = model.calibration["val_ece_before"]
        metrics["val/ece_after"] = model.calibration["val_ece_after"]
    if model.threshold is not None:
        metrics["threshold"] = model.threshold
    return metrics


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and test; returns the flat metrics written to metrics.json."""
    output_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_data(cfg)
    model = build_model(cfg, datamodule)
    print_data_summary(datamodule.summary())
    print_table(
        f"layer groups ({model.strategy.name}, bn={model.strategy.bn})",
        layer_group_rows(
            model, lr=cfg.optimizer.get("lr"), weight_decay=cfg.optimizer.get("weight_decay", 0.0)
        ),
    )
    trainer = build_trainer(cfg, model, output_dir)
    datamodule.batch_size = per_process_batch_size(datamodule.batch_size, trainer.world_size)
    feature_cache = cfg.get("feature_cache") or {}
    fit_data = head_training_data(
        datamodule, model, trainer, feature_cache.get("enabled", "auto"), feature_cache.get("dir")
    )
    trainer.fit(model, datamodule=fit_data, ckpt_path=checkpoint_to_resume(cfg, output_dir))

    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if checkpoint and checkpoint.best_model_path else None
    metrics: dict[str, float] = {}
    best = model.best_metric.compute().item() if model.best_metric.update_count else float("nan")
    metrics[f"{cfg.optimized_metric}_best"] = best
    fitted = fitted_on_validation(model)
    metrics.update(fitted)
    if trainer.is_global_zero:
        write_decision_settings(model, output_dir)
        log_scalars(trainer.loggers, fitted, trainer.global_step)
    if cfg.get("test", True):
        results = trainer.test(model, datamodule=fit_data, ckpt_path=best_path or None, weights_only=True)
        metrics.update({k: float(v) for k, v in results[0].items()})
        if trainer.is_global_zero:
            bootstrap = cfg.get("bootstrap") or {}
            report = evaluation_report(
                model,
                "test",
                output_dir,
                trainer.loggers,
                step=trainer.global_step,
                bootstrap_samples=int(bootstrap.get("samples", 0)),
                bootstrap_seed=int(bootstrap.get("seed", 0)),
            )
            log_scalars(trainer.loggers, report, trainer.global_step)
            metrics.update(report)
    metrics["epochs"] = trainer.current_epoch
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        for logger in trainer.loggers:
            if isinstance(logger, HParamsTensorBoardLogger):
                logger.log_hparams_with_metrics(
                    hparams_for_tensorboard(cfg),
                    {k: v for k, v in metrics.items() if "/" in k and math.isfinite(v)},
                )
        print_metrics(metrics, title=f"metrics ({output_dir})")
    return metrics


def resume_arguments(run_dir: str | Path) -> list[str]:
    """The command-line overrides that continue the run in `run_dir`: its own overrides, its run dir, and
    its last.ckpt (same config, same TensorBoard run)."""
    run_dir = Path(run_dir).expanduser().resolve()
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    last = run_dir / "checkpoints" / "last.ckpt"
    if not overrides_file.is_file():
        raise ConfigError(
            f"resume={run_dir}: no .hydra/overrides.yaml there; give the run directory of a medtransfer-train run."
        )
    if not last.is_file():
        raise ConfigError(
            f"resume={run_dir}: no checkpoints/last.ckpt yet (the run ended before its first epoch); start it again instead."
        )
    saved = [
        o
        for o in yaml.safe_load(overrides_file.read_text()) or []
        if not o.startswith(("ckpt_path=", "hydra."))
    ]
    return [*saved, quoted_override("ckpt_path", last), quoted_override("hydra.run.dir", run_dir)]


def main() -> None:
    """Console entry point: `resume=<run dir>` is expanded into that run's own overrides first."""
    args = sys.argv[1:]
    resume = [a for a in args if a.startswith("resume=")]
    if resume:
        try:
            extra = resume_arguments(resume[-1].split("=", 1)[1])
        except ConfigError as err:
            print_error(str(err))
            raise SystemExit(2) from None
        sys.argv = [sys.argv[0], *extra, *[a for a in args if not a.startswith("resume=")]]
    check_command_line()
    install_job_subprocess_command()
    hydra_main()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    if cfg.get("print_config", True):
        print_config(cfg)
    with process_group_per_job():
        metrics = run_job(lambda: train(cfg), cfg.paths.output_dir)
    key = f"{cfg.optimized_metric}_best"
    value = metrics.get(key, float("nan")) if isinstance(metrics, dict) else metrics
    return sweep_objective(value, cfg.paths.output_dir, key)  # None when not finite: a failed trial


if __name__ == "__main__":
    main()
