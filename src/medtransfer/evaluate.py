"""`medtransfer-eval ckpt_path=PATH [split=test] [data=... data.*=...]`: metrics of a checkpoint on a split,
written to metrics.json, with the confusion matrix, the reliability diagram, ROC and precision-recall curves
as PNG and the per-class report, in the eval run's own directory. The checkpoint's temperature and threshold
(fitted after training) are applied."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from medtransfer.callbacks.confusion_matrix import ConfusionMatrix
from medtransfer.data.datamodule import SPLITS, MedicalImageDataModule
from medtransfer.evaluation.split_report import evaluation_report, write_decision_settings
from medtransfer.models.checkpoint import load_classifier
from medtransfer.models.classifier import Classifier
from medtransfer.utils.command_line import check_command_line, user_override
from medtransfer.utils.console import console, print_metrics
from medtransfer.utils.errors import ConfigError
from medtransfer.utils.paths import CONFIG_DIR
from medtransfer.utils.run_status import run_job


def datamodule_for(model: Classifier, data_cfg: DictConfig | None) -> MedicalImageDataModule:
    """The data given on the command line, else the data the checkpoint was trained on; preprocessed as
    the checkpoint's model expects."""
    config = OmegaConf.create(model.hparams.data_config) if data_cfg is None else data_cfg
    if config is None:
        raise ConfigError("The checkpoint carries no data config: give one, e.g. data=folder data.root=DIR.")
    side = model.preprocessing["image_size"]
    asked = user_override("data.image_size")
    if asked is not None and str(asked) != str(side):  # the network was trained at its own size
        console.print(
            f"[yellow]data.image_size={asked} is not used: the checkpoint's network takes {side}×{side} px.[/yellow]"
        )
    datamodule = instantiate(config, image_size=side)
    datamodule.prepare_data()
    datamodule.setup()
    if datamodule.classes != model.class_names:
        raise ConfigError(
            f"The data's classes {datamodule.classes} differ from the checkpoint's {model.class_names}."
        )
    datamodule.set_normalization(model.preprocessing["mean"], model.preprocessing["std"])
    return datamodule


def evaluate(cfg: DictConfig) -> dict[str, float]:
    if cfg.split not in SPLITS:
        raise ConfigError(f"split={cfg.split!r}: use one of {', '.join(SPLITS)}.")
    output_dir = Path(cfg.paths.output_dir)
    model = load_classifier(cfg.ckpt_path)
    datamodule = datamodule_for(model, cfg.get("data"))
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg and "_target_" in lg]
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        logger=loggers or False,
        callbacks=[ConfusionMatrix(str(output_dir), split="test")],
        enable_progress_bar=False,
    )
    loader = datamodule.dataloader(cfg.split)
    results = trainer.test(model, dataloaders=loader, verbose=False)[0]
    # test_step names metrics test/*; report them under the split that was evaluated
    metrics = {f"{cfg.split}/{k.split('/', 1)[1]}": float(v) for k, v in results.items()}
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        bootstrap = cfg.get("bootstrap") or {}
        metrics.update(
            evaluation_report(
                model,
                cfg.split,
                output_dir,
                trainer.loggers,
                bootstrap_samples=int(bootstrap.get("samples", 0)),
                bootstrap_seed=int(bootstrap.get("seed", 0)),
            )
        )
        write_decision_settings(model, output_dir)
        (output_dir / "metrics.json").write_text(
            json.dumps({"ckpt_path": str(cfg.ckpt_path), **metrics}, indent=2)
        )
        if cfg.split != "test":
            png = output_dir / "confusion_matrix_test.png"
            if png.exists():
                png.rename(output_dir / f"confusion_matrix_{cfg.split}.png")
        print_metrics(metrics, title=f"{cfg.split} metrics of {cfg.ckpt_path}")
    return metrics


def main() -> None:
    """Console entry point: overrides Hydra cannot parse get medtransfer's message first."""
    check_command_line()
    hydra_main()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def hydra_main(cfg: DictConfig) -> None:
    run_job(lambda: evaluate(cfg), cfg.paths.output_dir)


if __name__ == "__main__":
    main()
