"""`medtransfer-eval ckpt_path=PATH [split=auto|test|val|train|all] [data=... data.*=...]`: metrics of a
checkpoint on a split, from one eval-mode pass over it (no augmentation, whatever the split), written to
metrics.json with the split's report (confusion matrix, reliability diagram, ROC and precision-recall
curves, per-class report) in the eval run's own directory, every key and file named by the split. The checkpoint's temperature and threshold are applied.

External evaluation: data given on the command line (`data=folder data.root=other_hospital`) without a
split of its own is scored whole (split=auto gives `all`; the checkpoint's own data gives `test`); its
classes are matched to the checkpoint's by name, any subset of them, and metrics that the classes present
leave undefined (AUROC of one class) are left out with the reason, under `undefined` in metrics.json.
The console says which split of which data was scored, with the images per class.

Several checkpoints (`ckpt_path=[a.ckpt,b.ckpt]`, or a sweep / cross-validation dir, optionally
`ensemble.top_k=3`) are evaluated as an ensemble, and test-time augmentation (`tta=[hflip,vflip,rot90]`)
as views of each image: probabilities averaged (models/ensemble.py); metrics.json also lists each
member's metrics and the mean uncertainty (spread over members × views)."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.panel import Panel

from medtransfer.data.datamodule import MedicalImageDataModule
from medtransfer.data.splits import SPLITS
from medtransfer.evaluation.metrics import undefined_metrics
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
from medtransfer.utils.console import print_metrics, print_warning, setup_logging, show
from medtransfer.utils.errors import ConfigError, DataError
from medtransfer.utils.paths import CONFIG_DIR
from medtransfer.utils.run_status import run_job

log = logging.getLogger(__name__)

SCORED_SPLITS = (*SPLITS, "all")  # all: every image of the data, as it is given


def given_source(data_cfg: DictConfig | None) -> bool:
    """Whether the command line names a data source (`data=<source>`), rather than changing the
    checkpoint's own data config (`data.root=/moved/copy`) or leaving it as it is."""
    return data_cfg is not None and "_target_" in data_cfg


def datamodule_for(
    model: Classifier, data_cfg: DictConfig | None, whole: bool = False
) -> MedicalImageDataModule:
    """The data given on the command line (`data=<source> data.*=…`), else the data the checkpoint was
    trained on (a data source of the project's, named in DATA_SOURCES), with the `data.*` values given
    without a source put over it (data.root=/moved/copy); preprocessed as the checkpoint's model expects,
    its classes matched to the model's by name (a subset is fine) and every image in the split `all`.
    whole: data without a split of its own stays unsplit (only `all`)."""
    config = data_cfg
    if not given_source(data_cfg):
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
    channels = model.preprocessing["in_channels"]
    datamodule.for_evaluation(model.class_names, whole=whole, channels=channels)
    datamodule.prepare_data()
    datamodule.setup()
    if datamodule.multilabel != model.task.multilabel:
        kinds = ("several labels per image", "one class per image")
        data_kind, model_kind = kinds[not datamodule.multilabel], kinds[not model.task.multilabel]
        raise ConfigError(
            f"The data ({datamodule.describe_source()}) gives {data_kind}, but the checkpoint's model was "
            f"trained on {model_kind}: evaluate it on data labelled as it was trained."
        )
    if datamodule.num_channels != channels:
        raise ConfigError(
            f"The data ({datamodule.describe_source()}) has {datamodule.num_channels}-channel images; the "
            f"checkpoint's model takes {channels}: export the images with {channels} channel(s)."
        )
    datamodule.set_normalization(model.preprocessing["mean"], model.preprocessing["std"])
    return datamodule


def scored_split(split: str, datamodule: MedicalImageDataModule, given: bool) -> str:
    """The split to score: `split`, or for split=auto `test` when the data has a split of its own (or is
    the checkpoint's own data, split as in training), else `all`. Says loudly what medtransfer made of
    data given without a split (and a split=train|val|test asked of it); DataError for an empty split."""
    splits = datamodule.data.splits
    if split == "auto":
        split = "test" if "test" in splits else "all"
    if split not in splits or not len(splits[split]):
        raise DataError(
            f"split={split}: the data ({datamodule.describe_source()}) has no {split} images. Use split=all "
            "to evaluate every image."
        )
    if given and datamodule.data.made_split and split != "all":
        print_warning(
            f"{datamodule.describe_source()} has no train/val/test split of its own: medtransfer split it "
            f"(data.seed={datamodule.seed}) and split={split} scores only its {split} part, "
            f"{len(splits[split])} of {len(splits['all'])} images. split=all scores every image "
            "(the default for such data).",
            title="medtransfer-eval: part of the data",
        )
    return split


def say_what_is_scored(datamodule: MedicalImageDataModule, split: str, given: bool) -> dict[str, int]:
    """Which split of which data is scored, and how many images of each class (multi-label: positives
    per label), on the console and in the log. Returns {class: images}."""
    per_class = dict(zip(datamodule.classes, datamodule.class_counts(split), strict=True))
    source = ", ".join(f"{k}={v}" for k, v in datamodule.describe_source().items() if k != "columns")
    part = "every image" if split == "all" else f"the {split} split"
    whose = "the data given" if given else "the checkpoint's own data"
    lines = [
        f"split={split}: {len(datamodule.data.splits[split])} images scored, {part} of {whose} ({source})",
        "per class: " + ", ".join(f"{c} {n}" for c, n in per_class.items()),
    ]
    absent = [c for c, n in per_class.items() if not n]
    if absent and not datamodule.multilabel:
        lines.append(
            f"no images of {', '.join(absent)}: metrics are over the {len(per_class) - len(absent)} of "
            f"the {len(per_class)} trained classes present"
        )
    # on the terminal and in evaluate.log
    show(Panel("\n".join(lines), title="medtransfer-eval: scored", border_style="cyan", title_align="left"))
    return per_class


def device_of(accelerator: str) -> torch.device:
    """trainer.accelerator (cpu | gpu | cuda | auto) as a device."""
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if on_gpu else "cpu")


def split_metrics(
    model: Classifier, logits: torch.Tensor, targets: torch.Tensor, split: str, batch_size: int
):
    """The metrics a test epoch logs (acc, auroc …, and the loss averaged over batches of `batch_size` as
    Lightning averages it), of the deployed model (temperature applied), named `<split>/…`; without
    those the classes present leave undefined (metrics.undefined_metrics)."""
    scaled = model.task.scale(logits, model.temperature)
    metrics = model.task.metrics(model.hparams.num_classes, f"{split}/", model.class_names)
    metrics.update(model.task.activation(scaled), targets)
    undefined = undefined_here(model, targets, split)
    with warnings.catch_warnings():  # torchmetrics on what is undefined: reported by evaluate, left out here
        if undefined:
            warnings.filterwarnings("ignore", message="No (positive|negative) samples in targets")
        values = {k: float(v) for k, v in metrics.compute().items() if k not in undefined}
    with torch.no_grad():
        losses = [
            (len(y), float(model.loss(s, y)))
            for s, y in zip(scaled.split(batch_size), targets.split(batch_size), strict=True)
        ]
    values[f"{split}/loss"] = sum(n * loss for n, loss in losses) / len(targets)
    return values


def undefined_here(model: Classifier, targets: torch.Tensor, split: str) -> dict[str, str]:
    """{`<split>/<metric>`: why} for the metrics the classes present in `targets` leave undefined
    (single-label models; a multi-label report leaves out labels without both classes itself)."""
    if model.task.multilabel:
        return {}
    return {f"{split}/{k}": why for k, why in undefined_metrics(targets, model.class_names).items()}


def evaluate(cfg: DictConfig) -> dict[str, float]:
    if cfg.split not in (*SCORED_SPLITS, "auto"):
        raise ConfigError(
            f"split={cfg.split!r}: use one of {', '.join(SCORED_SPLITS)}, or auto (test; all for data given "
            "without a split of its own)."
        )
    output_dir = Path(cfg.paths.output_dir)
    ensemble = cfg.get("ensemble") or {}
    paths = checkpoint_paths(cfg.ckpt_path, ensemble.get("top_k"), ensemble.get("metric"))
    members = load_members(paths)
    views = tta_views(cfg.get("tta"))
    given = given_source(cfg.get("data"))
    whole = cfg.split == "all" or (cfg.split == "auto" and given)
    datamodule = datamodule_for(members[0], cfg.get("data"), whole=whole)
    split = scored_split(cfg.split, datamodule, given)
    check_no_leak(members, paths, split, given)
    per_class = say_what_is_scored(datamodule, split, given)
    loader = datamodule.dataloader(split)
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
                model, as_logits(member_probs, multilabel), targets, split, loader.batch_size
            )
            member_metrics.append({"ckpt_path": str(path), **values})
    metrics = split_metrics(model, logits, targets, split, loader.batch_size)
    metrics[f"{split}/images"] = len(targets)  # every eval says how many images it scored
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg and "_target_" in lg]
    bootstrap = cfg.get("bootstrap") or {}
    samples, seed = int(bootstrap.get("samples", 0)), int(bootstrap.get("seed", 0))
    metrics.update(evaluation_report(model, logits, targets, split, output_dir, loggers, 0, samples, seed))
    if spread is not None:
        metrics[f"{split}/uncertainty_mean"] = float(spread.mean())
    undefined = undefined_here(model, targets, split)
    for key, why in undefined.items():
        log.warning("%s is not reported: %s.", key, why)
    write_decision_settings(model, output_dir)
    extra = {"members": member_metrics} if len(members) > 1 else {}
    ckpt = str(paths[0]) if len(paths) == 1 else [str(p) for p in paths]
    written = {"ckpt_path": ckpt, "tta": views, "split": split, f"{split}/images_per_class": per_class}
    written.update({**metrics, **({"undefined": undefined} if undefined else {}), **extra})
    atomic_write_json(output_dir / "metrics.json", written)
    what = f"{len(members)} checkpoints" if len(members) > 1 else str(paths[0])
    if len(views) > 1:
        what += f", TTA {'+'.join(views)}"
    for member in member_metrics:
        print_metrics(
            {k: v for k, v in member.items() if k != "ckpt_path"}, title=f"member {member['ckpt_path']}"
        )
    print_metrics(metrics, title=f"{split} metrics of {what} ({len(targets)} images; files in {output_dir})")
    return metrics


def check_no_leak(members: list[Classifier], paths: list[Path], split: str, given: bool) -> None:
    """An ensemble of the folds of a cross-validation has seen every non-test image of its data in
    training (each member the others' validation folds): only its test split is unseen, and any data
    given on the command line with split=all. ConfigError otherwise."""
    folds = {(m.hparams.get("data_config") or {}).get("fold") for m in members}
    if len(members) > 1 and len(folds) > 1 and split != "test" and not (given and split == "all"):
        raise ConfigError(
            f"split={split} with an ensemble of {len(members)} cross-validation folds ({paths[0].parent.parent} "
            f"…): each member trained on the others' validation folds, so its {split} metrics would be "
            "optimistic. Evaluate the ensemble on split=test (or on other data, data=<source> split=all); the "
            "cross-validation's own out-of-fold metrics are in cv_report.md."
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
