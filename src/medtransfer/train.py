"""`medtransfer-train`: seed → instantiate data, model, callbacks, loggers, trainer → fit → test the best
checkpoint → metrics.json and TensorBoard HPARAMS → return the optimized metric (what a sweeper maximizes).
What a run does beyond fitting (checkpoints, fitting the temperature and threshold on validation,
explanations, the test report) is its callbacks' work, listed in conf/callbacks/."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
import lightning as L
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from medtransfer.callbacks.fit_on_validation import fitted_metrics
from medtransfer.data.datamodule import MedicalImageDataModule
from medtransfer.evaluation.published import comparison_rows
from medtransfer.features.datamodule import head_training_data
from medtransfer.loggers.tensorboard import HParamsTensorBoardLogger
from medtransfer.models.classifier import Classifier
from medtransfer.utils.atomic_write import atomic_write_json
from medtransfer.utils.checkpoint_io import AtomicCheckpointIO, require_intact
from medtransfer.utils.command_line import (
    check_command_line,
    check_experiment_data,
    quoted_override,
    user_override,
)
from medtransfer.utils.command_process import settle_after_first_job
from medtransfer.utils.console import (
    print_config,
    print_data_summary,
    print_error,
    print_metrics,
    print_table,
    print_warning,
    setup_logging,
)
from medtransfer.utils.distributed import (
    cpu_sync_batchnorm,
    install_job_subprocess_command,
    per_process_batch_size,
    process_group_per_job,
)
from medtransfer.utils.errors import ConfigError
from medtransfer.utils.optuna_sweeps import guard_optuna_sweeps
from medtransfer.utils.paths import CONFIG_DIR, absolute_paths
from medtransfer.utils.run_lock import command_line_lock
from medtransfer.utils.run_status import run_job, sweep_objective
from medtransfer.utils.sweep_jobs import job_in_run_dir
from medtransfer.utils.train_length import epochs_for_min_steps, optimizer_steps_per_epoch


def build_data(cfg: DictConfig) -> MedicalImageDataModule:
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def build_model(cfg: DictConfig, datamodule: MedicalImageDataModule) -> Classifier:
    """The classifier sized by the data (class names, task, input channels, class or label counts), with the optimizer,
    scheduler and freezing strategy of their config groups."""
    model = instantiate(
        cfg.model,
        num_classes=datamodule.num_classes,
        in_channels=datamodule.num_channels,
        class_names=datamodule.classes,
        task=datamodule.task,
        class_counts=datamodule.class_counts("train"),
        known_counts=datamodule.known_counts("train"),
        image_size=datamodule.image_size,
        monitor=cfg.optimized_metric,
        data_config=absolute_paths(OmegaConf.to_container(cfg.data, resolve=True)),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        finetune=instantiate(cfg.finetune) if cfg.get("finetune") else None,
        _recursive_=False,  # data_config is data (it names a data module), not instantiated here
        _convert_="all",  # plain values in the checkpoint's hyper-parameters
    )
    datamodule.set_normalization(model.preprocessing["mean"], model.preprocessing["std"])
    frozen = [g for g in model.groups if g not in model.strategy.trainable(0)]
    if cfg.model.get("weights") is None and frozen:
        print_warning(
            f"finetune={config_value(cfg, 'finetune')} starts with {', '.join(frozen)} frozen, but model.weights=null: "
            "those layers keep their random initial weights, so the head learns from random features. "
            "Start from pretrained weights (model.weights=DEFAULT, or a file or run checkpoint), or use "
            "finetune=full to train from scratch."
        )
    return model


def build_trainer(cfg: DictConfig, model: Classifier) -> L.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    if not cfg.trainer.get("enable_progress_bar", True):  # trainer.enable_progress_bar=false wins
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg and "_target_" in lg]
    kwargs = {"enable_checkpointing": any(isinstance(c, ModelCheckpoint) for c in callbacks)}
    if cfg.trainer.get("strategy", "auto") == "ddp" and not model.strategy.static:
        # layer groups that unfreeze mid-run get no gradient while frozen: DDP must expect unused parameters
        kwargs["strategy"] = DDPStrategy(find_unused_parameters=True)
    kwargs["plugins"] = [AtomicCheckpointIO()]  # atomic checkpoint writes, weights-only reads
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


# what defines a run, listed in HPARAMS after the swept keys: backbone, weights, freezing strategy, lr,
# batch size, image size, epochs, seed (the full config is in the run dir's .hydra/config.yaml)
RUN_KEYS = (
    "model.backbone",
    "model.weights",
    "finetune",
    "optimizer.lr",
    "data.batch_size",
    "data.image_size",
    "trainer.max_epochs",
    "seed",
)


def config_value(cfg: DictConfig, key: str):
    """A key's value for HPARAMS: a config group's chosen option by name (`finetune` -> `full`), else the
    resolved value (numbers stay numbers), else its text."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    if key in choices:
        return choices[key]
    value = OmegaConf.select(cfg, key, default=None)
    if isinstance(value, DictConfig) and "_target_" in value:  # a group composed outside a Hydra run
        name = str(value._target_).rsplit(".", 1)[-1]
        return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
    if isinstance(value, DictConfig | ListConfig):
        return str(OmegaConf.to_container(value, resolve=True))
    return value


def hparams_for_tensorboard(cfg: DictConfig, swept: list[str] = ()) -> dict:
    """The swept keys first, then RUN_KEYS, in that order."""
    return {key: config_value(cfg, key) for key in dict.fromkeys([*swept, *RUN_KEYS])}


def hparams_metrics(cfg: DictConfig, metrics: dict[str, float]) -> dict[str, float]:
    """The metric columns of HPARAMS, the same for every run of a sweep: the best validation value of the
    optimized metric, then test AUROC and accuracy with their bootstrap 95% interval bounds."""
    tags = [f"{cfg.optimized_metric}_best", f"test/{str(cfg.optimized_metric).split('/')[-1]}"]
    tags += [f"test/{m}{b}" for m in ("auroc", "acc") for b in ("", "_ci_low", "_ci_high")]
    return {tag: metrics.get(tag, float("nan")) for tag in dict.fromkeys(tags)}


def plan_train_length(cfg: DictConfig, datamodule: MedicalImageDataModule) -> tuple[int, int]:
    """(max_epochs, optimizer steps per epoch): trainer.max_epochs, raised by train_length.min_steps."""
    steps = optimizer_steps_per_epoch(
        sum(datamodule.class_counts("train")),
        datamodule.batch_size,
        cfg.trainer.get("accumulate_grad_batches") or 1,
        cfg.trainer.get("limit_train_batches"),
    )
    min_steps = (cfg.get("train_length") or {}).get("min_steps")
    return epochs_for_min_steps(cfg.trainer.max_epochs, steps, min_steps), steps


def apply_train_length(cfg: DictConfig, datamodule: MedicalImageDataModule) -> None:
    """Raises cfg.trainer.max_epochs for train_length.min_steps, and says so loudly; an epoch count the user
    typed on the command line (and no min_steps of their own) is kept, and the warning says what it skips."""
    epochs, steps = plan_train_length(cfg, datamodule)
    if epochs == cfg.trainer.max_epochs:
        return
    min_steps = cfg.train_length.min_steps
    if user_override("trainer.max_epochs") is not None and user_override("train_length.min_steps") is None:
        print_warning(
            f"trainer.max_epochs={cfg.trainer.max_epochs} as given: {cfg.trainer.max_epochs * steps} optimizer "
            f"steps, below this preset's train_length.min_steps={min_steps} (which would train {epochs} "
            f"epochs). Add train_length.min_steps={min_steps} to the command line to train that long."
        )
        return
    print_warning(
        f"train_length.min_steps={min_steps}: {cfg.trainer.max_epochs} epochs of {steps} optimizer steps "
        f"would be {cfg.trainer.max_epochs * steps} steps; training {epochs} epochs ({epochs * steps} steps) "
        "instead. Set train_length.min_steps=null to keep trainer.max_epochs."
    )
    with open_dict(cfg):
        cfg.trainer.max_epochs = epochs


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and test; returns the flat metrics written to metrics.json."""
    output_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_data(cfg)
    print_data_summary(datamodule.summary())
    apply_train_length(cfg, datamodule)
    model = build_model(cfg, datamodule)
    trainer = build_trainer(cfg, model)
    datamodule.batch_size = per_process_batch_size(datamodule.batch_size, trainer.world_size)
    feature_cache = cfg.get("feature_cache") or {}
    data = head_training_data(
        datamodule, model, trainer, feature_cache.get("enabled", "auto"), feature_cache.get("dir")
    )
    trainer.fit(model, datamodule=data, ckpt_path=checkpoint_to_resume(cfg, output_dir), weights_only=True)

    best = model.best_metric.compute().item() if model.best_metric.update_count else float("nan")
    metrics = {
        f"{cfg.optimized_metric}_best": best,
        **fitted_metrics(model.calibration, model.operating_point),
    }
    if cfg.get("test", True):
        best_path = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None
        results = trainer.test(model, datamodule=data, ckpt_path=best_path or None, weights_only=True)
        metrics.update({k: float(v) for k, v in results[0].items()})
    metrics["epochs"] = trainer.current_epoch
    if trainer.is_global_zero:
        atomic_write_json(output_dir / "metrics.json", metrics)
        for logger in trainer.loggers:
            if isinstance(logger, HParamsTensorBoardLogger):
                params = hparams_for_tensorboard(cfg, logger.swept_keys)
                logger.log_hparams_with_metrics(params, hparams_metrics(cfg, metrics), logger.swept_keys)
                logger.close()
        print_metrics(metrics, title=f"metrics ({output_dir})")
        print_published_comparison(cfg, datamodule, metrics)
    return metrics


def print_published_comparison(cfg: DictConfig, datamodule, metrics: dict[str, float]) -> None:
    """For a MedMNIST set the paper reports on: this run's test AUROC and accuracy beside the paper's."""
    dataset = datamodule.describe_source().get("name")
    label = f"{cfg.model.backbone} ({datamodule.image_size}), {metrics['epochs']} epoch{'s' if metrics['epochs'] != 1 else ''}"
    rows = comparison_rows(dataset, metrics, label)
    if rows:
        print_table(f"{dataset}: this run beside the published results (test split)", rows)


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
    require_intact(last, key="resume")  # a truncated last.ckpt is named, with the last good one
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
    if {"-m", "--multirun"} & set(sys.argv[1:]):  # importing Optuna takes seconds: sweeps only
        guard_optuna_sweeps()  # a sweep without a best trial ends with a message, not Optuna's traceback
    # lock a run/sweep dir named on the command line before Hydra writes into it
    with command_line_lock(sys.argv[1:]):
        hydra_main()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    setup_logging()
    check_experiment_data(cfg)  # data=SOURCE experiment=NAME: the preset's data values used, or not, said
    with job_in_run_dir(cfg) as earlier:  # the run dir is locked; a sweep re-run skips or resumes jobs
        if earlier is not None:
            return earlier
        if cfg.get("print_config", True):
            print_config(cfg)
        with process_group_per_job():
            metrics = run_job(lambda: train(cfg), cfg.paths.output_dir)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        settle_after_first_job()  # later jobs' garbage collections skip what the first one imported
    key = f"{cfg.optimized_metric}_best"
    value = metrics.get(key, float("nan")) if isinstance(metrics, dict) else metrics
    return sweep_objective(value, cfg.paths.output_dir, key)  # None when not finite: a failed trial


if __name__ == "__main__":
    main()
