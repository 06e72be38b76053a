"""`medtransfer-train`: seed → data → model → callbacks, loggers, trainer → fit → fit the temperature and
threshold on the validation split and explain validation images (both at the end of fit, on the best
checkpoint) → test the best checkpoint → test report, metrics.json and TensorBoard HPARAMS → return the
optimized metric (what a sweeper maximizes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, OmegaConf

from medtransfer.callbacks.confusion_matrix import ConfusionMatrix
from medtransfer.callbacks.explanation_grid import ExplanationGrid
from medtransfer.callbacks.fit_on_validation import FitOnValidation
from medtransfer.callbacks.run_files import RunFiles
from medtransfer.callbacks.sample_images import SampleImages
from medtransfer.console import print_config, print_data_summary, print_metrics, print_table
from medtransfer.data.datamodule import MedicalImageDataModule
from medtransfer.evaluation_report import evaluation_report, log_scalars, write_decision_settings
from medtransfer.finetune.summary import layer_group_rows
from medtransfer.job import run_job
from medtransfer.loggers import HParamsTensorBoardLogger
from medtransfer.models.classifier import Classifier
from medtransfer.paths import CONFIG_DIR, absolute_paths


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
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **kwargs)


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
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

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
        results = trainer.test(model, datamodule=datamodule, ckpt_path=best_path or None, weights_only=True)
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


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    if cfg.get("print_config", True):
        print_config(cfg)
    metrics = run_job(lambda: train(cfg), cfg.paths.output_dir)
    if isinstance(metrics, dict):
        return metrics.get(f"{cfg.optimized_metric}_best", float("nan"))
    return metrics


if __name__ == "__main__":
    main()
