"""`medtransfer-eval ckpt_path=PATH [split=test] [data=... data.*=...]`: metrics of a checkpoint on a split,
from one eval-mode pass over it, written to metrics.json with the split's report (confusion matrix,
reliability diagram, ROC and precision-recall curves, per-class report) in the eval run's own directory,
every key and file named by the split. The checkpoint's temperature and threshold are applied.

Several checkpoints (`ckpt_path=[a.ckpt,b.ckpt]`, or a sweep / cross-validation dir, optionally
`ensemble.top_k=3`) are evaluated as an ensemble, and test-time augmentation (`tta=[hflip,vflip,rot90]`)
as views of each image: probabilities averaged (models/ensemble.py); metrics.json also lists each
member's metrics and the mean uncertainty (spread over members × views)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from medtransfer.data.datamodule import MedicalImageDataModule
from medtransfer.data.splits import SPLITS
from medtransfer.evaluation.split_report import evaluation_report, write_decision_settings
from medtransfer.models.checkpoint import DATA_SOURCES
from medtransfer.models.classifier import Classifier
from medtransfer.models.ensemble import (
    as_logits,
    checkpoint_paths,
    ensemble_model,
    load_members,
    predict_views,
    tta_views,
    uncertainty,
)
from medtransfer.utils.atomic_write import atomic_write_json
from medtransfer.utils.command_line import check_command_line, user_override
from medtransfer.utils.console import print_metrics, setup_logging
from medtransfer.utils.errors import ConfigError
from medtransfer.utils.paths import CONFIG_DIR
from medtransfer.utils.run_status import run_job

log = logging.getLogger(__name__)


def datamodule_for(model: Classifier, data_cfg: DictConfig | None) -> MedicalImageDataModule:
    """The data given on the command line (`data=<source> data.*=…`), else the data the checkpoint was
    trained on (a data source of the project's, named in DATA_SOURCES), with the `data.*` values given
    without a source put over it (data.root=/moved/copy); preprocessed as the checkpoint's model expects."""
    config = data_cfg
    if data_cfg is None or "_target_" not in data_cfg:
        config = OmegaConf.merge(OmegaConf.create(model.hparams.data_config or {}), data_cfg or {})
    if not config:
        raise ConfigError("The checkpoint carries no data config: give one, e.g. data=folder data.root=DIR.")
    if config.get("_target_") not in DATA_SOURCES:
        raise ConfigError(
            f"The data config names {config.get('_target_')!r}, not one of medtransfer's data sources "
            f"({', '.join(DATA_SOURCES)}): give the data on the command line, e.g. data=folder data.root=DIR."
        )
    side = model.preprocessing["image_size"]
    asked = user_override("data.image_size")
    if asked is not None and str(asked) != str(side):  # the network was trained at its own size
        log.warning(
            "data.image_size=%s is not used: the checkpoint's network takes %s×%s px.", asked, side, side
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


def device_of(accelerator: str) -> torch.device:
    """trainer.accelerator (cpu | gpu | cuda | auto) as a device."""
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if on_gpu else "cpu")


def split_metrics(
    model: Classifier, logits: torch.Tensor, targets: torch.Tensor, split: str, batch_size: int
):
    """The metrics a test epoch logs (acc, auroc …, and the loss averaged over batches of `batch_size` as
    Lightning averages it), of the deployed model (temperature applied), named `<split>/…`."""
    scaled = model.task.scale(logits, model.temperature)
    metrics = model.task.metrics(model.hparams.num_classes, f"{split}/")
    metrics.update(model.task.activation(scaled), targets)
    values = {k: float(v) for k, v in metrics.compute().items()}
    with torch.no_grad():
        losses = [
            (len(y), float(model.loss(s, y)))
            for s, y in zip(scaled.split(batch_size), targets.split(batch_size), strict=True)
        ]
    values[f"{split}/loss"] = sum(n * loss for n, loss in losses) / len(targets)
    return values


def evaluate(cfg: DictConfig) -> dict[str, float]:
    if cfg.split not in SPLITS:
        raise ConfigError(f"split={cfg.split!r}: use one of {', '.join(SPLITS)}.")
    output_dir = Path(cfg.paths.output_dir)
    ensemble = cfg.get("ensemble") or {}
    paths = checkpoint_paths(cfg.ckpt_path, ensemble.get("top_k"), ensemble.get("metric"))
    members = load_members(paths)
    views = tta_views(cfg.get("tta"))
    check_no_leak(members, paths, cfg.split, cfg.get("data"))
    datamodule = datamodule_for(members[0], cfg.get("data"))
    loader = datamodule.dataloader(cfg.split)
    device = device_of(cfg.trainer.accelerator)
    member_metrics = []
    if len(members) == 1 and views == ["identity"]:  # one plain pass, the checkpoint's own logits
        model = members[0]
        logits, targets = model.to(device).collect_logits(loader)
        model.cpu()
        spread = None
    else:
        model = ensemble_model(members)
        multilabel = model.task.multilabel
        probs, targets, stack = predict_views(members, loader, views, device)
        logits = as_logits(probs, multilabel)
        spread = uncertainty(stack, multilabel)
        per_member = stack.reshape(len(members), len(views), *stack.shape[1:]).mean(1)
        for path, member_probs in zip(paths, per_member, strict=True):
            values = split_metrics(
                ensemble_model(members),
                as_logits(member_probs, multilabel),
                targets,
                cfg.split,
                loader.batch_size,
            )
            member_metrics.append({"ckpt_path": str(path), **values})
    metrics = split_metrics(model, logits, targets, cfg.split, loader.batch_size)
    metrics[f"{cfg.split}/images"] = len(targets)  # every eval says how many images it scored
    log.info("%s: %d images of the %s split scored.", cfg.split, len(targets), cfg.split)
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg and "_target_" in lg]
    bootstrap = cfg.get("bootstrap") or {}
    samples, seed = int(bootstrap.get("samples", 0)), int(bootstrap.get("seed", 0))
    metrics.update(
        evaluation_report(model, logits, targets, cfg.split, output_dir, loggers, 0, samples, seed)
    )
    if spread is not None:
        metrics[f"{cfg.split}/uncertainty_mean"] = float(spread.mean())
    write_decision_settings(model, output_dir)
    extra = {"members": member_metrics} if len(members) > 1 else {}
    ckpt = str(paths[0]) if len(paths) == 1 else [str(p) for p in paths]
    atomic_write_json(output_dir / "metrics.json", {"ckpt_path": ckpt, "tta": views, **metrics, **extra})
    what = f"{len(members)} checkpoints" if len(members) > 1 else str(paths[0])
    if len(views) > 1:
        what += f", TTA {'+'.join(views)}"
    for member in member_metrics:
        print_metrics(
            {k: v for k, v in member.items() if k != "ckpt_path"}, title=f"member {member['ckpt_path']}"
        )
    print_metrics(metrics, title=f"{cfg.split} metrics of {what}")
    return metrics


def check_no_leak(members: list[Classifier], paths: list[Path], split: str, data_cfg) -> None:
    """An ensemble of the folds of a cross-validation has seen every non-test image in training (each
    member the others' validation folds): only its test split is unseen. ConfigError otherwise."""
    folds = {(m.hparams.get("data_config") or {}).get("fold") for m in members}
    if len(members) > 1 and len(folds) > 1 and split != "test":
        raise ConfigError(
            f"split={split} with an ensemble of {len(members)} cross-validation folds ({paths[0].parent.parent} "
            f"…): each member trained on the others' validation folds, so its {split} metrics would be "
            "optimistic. Evaluate the ensemble on split=test; the cross-validation's own out-of-fold "
            "metrics are in cv_report.md."
        )


def partial_data_overrides(args: list[str]) -> list[str]:
    """`data.KEY=VALUE` without `data=<source>` changes the checkpoint's own data config (e.g.
    data.root=/moved/copy): such keys are added (`+data.KEY`), since eval.yaml selects no data source."""
    if any(a.startswith("data=") for a in args):
        return args
    return [f"+{a}" if a.startswith("data.") else a for a in args]


def main() -> None:
    """Console entry point: overrides Hydra cannot parse get medtransfer's message first."""
    check_command_line()
    sys.argv = [sys.argv[0], *partial_data_overrides(sys.argv[1:])]
    hydra_main()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def hydra_main(cfg: DictConfig) -> None:
    setup_logging()
    run_job(lambda: evaluate(cfg), cfg.paths.output_dir)


if __name__ == "__main__":
    main()
