"""`medtransfer-predict ckpt_path=PATH input=DIR_OR_FILE [explain=true]`: classify new images with a
checkpoint (which carries the class names, preprocessing, temperature and threshold) and write
predictions.csv: path, predicted class, one probability column per class (and with explain=true the path of
a Grad-CAM overlay PNG per image, in explanations/ next to it); predictions.json says how the class was
decided. A multi-label model writes prob_<label> and pred_<label> (0/1 at the label's threshold) for every
label, and `prediction` joins the predicted labels with |; its overlays explain `explain_label=<label>`, or
each image's top-scoring label. Only file paths identify an image: nothing from a DICOM header is written.

The inputs are checked as training checks its data: archive and system debris (`__MACOSX/`, `._*`, hidden
files) is ignored; every image is read and decoded in full first, and files that cannot be used are listed
(an `error` column in predictions.csv and `unreadable` in predictions.json, with a warning) while the rest
are predicted. Images are decoded with the intensity window the checkpoint was trained with.

Several checkpoints (`ckpt_path=[a.ckpt,b.ckpt]` or a sweep / cross-validation dir, `ensemble.top_k`) and
test-time augmentation (`tta=[hflip,vflip,rot90]`) average the probabilities over members × views
(models/ensemble.py) and add an `uncertainty` column: the spread among them (std of the positive class
probability; else the mean std over classes)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader

from medtransfer.data.datamodule import default_num_workers
from medtransfer.data.datasets import FileDataset
from medtransfer.data.files.decode import is_image_file, read_image, window_from_config
from medtransfer.data.files.inspection import FileFacts, few_levels_message, inspect_files
from medtransfer.data.files.listing import shown_path, walk_files
from medtransfer.data.transforms import eval_transform
from medtransfer.evaluation.explanations import check_method, heatmaps, overlay
from medtransfer.evaluation.split_report import decision_text
from medtransfer.models.ensemble import (
    VIEWS,
    checkpoint_paths,
    ensemble_model,
    load_members,
    tta_views,
    uncertainty,
)
from medtransfer.utils.atomic_write import atomic_open, atomic_write_json
from medtransfer.utils.command_line import check_command_line
from medtransfer.utils.console import console, setup_logging
from medtransfer.utils.errors import ConfigError, DataError
from medtransfer.utils.paths import CONFIG_DIR
from medtransfer.utils.run_status import run_job

log = logging.getLogger(__name__)


def find_images(input_path: str | Path) -> tuple[list[str], dict[str, FileFacts]]:
    """The image files of `input_path` (a file, or a folder searched recursively, symlinked folders
    followed, debris ignored as in training: `files.listing`), and the folders that could not be read
    (as FileFacts with reason and fix). Raises DataError when there is no image at all."""
    path = Path(input_path).expanduser()
    if path.is_file():
        return [str(path)], {}
    if not path.is_dir():
        raise DataError(f"input={path}: no such file or folder.")
    walk = walk_files(path)
    files = [f for f in walk.files if is_image_file(f)]
    unreadable = {
        folder: FileFacts(reason=f"unreadable folder: {why}", fix="give read permission on it")
        for folder, why in walk.unreadable
    }
    if not files:
        raise DataError(f"input={path}: no image files (.png .jpg .jpeg .bmp .tif .tiff, DICOM) in it.")
    return files, unreadable


def check_inputs(files: list[str], window) -> tuple[list[str], dict[str, FileFacts]]:
    """Read and decode every file once (as training's validation does): the usable paths, and the
    others with their reason and fix. Warns about them, and about images with few grey levels. Raises
    DataError when none is usable."""
    facts = inspect_files(files, cache_dir=None, window=window).facts
    bad = {p: f for p, f in facts.items() if not f.ok}
    usable = [p for p in files if p not in bad]
    if not usable:
        raise DataError(
            "\n".join(
                [f"None of the {len(files)} input file(s) can be used:"]
                + [f"  {shown_path(p)}: {f.reason}\n    fix: {f.fix}" for p, f in sorted(bad.items())]
            )
        )
    if bad:
        log.warning(
            "%d of %d input file(s) cannot be used and are not predicted (listed with the reason in the "
            "error column of predictions.csv): %s",
            len(bad),
            len(files),
            "; ".join(f"{shown_path(p)}: {f.reason}" for p, f in sorted(bad.items())[:5]),
        )
    message = few_levels_message({p: facts[p] for p in usable}, window)
    if message:
        log.warning(message)
    return usable, bad


def overlay_path(path: str | Path, input_path: str | Path, explanations_dir: Path) -> Path:
    """explanations/<the image's path below the input folder>.cam.png (the original name is kept whole, so
    a.png and a.jpg do not collide)."""
    path, root = Path(path), Path(input_path).expanduser()
    relative = path.relative_to(root) if root.is_dir() else Path(path.name)
    return explanations_dir / relative.parent / f"{relative.name}.cam.png"


def predict(
    ckpt_path: str | Path,
    input_path: str | Path,
    output: str | Path,
    batch_size: int = 64,
    num_workers="auto",
    explain: bool = False,
    explain_method: str = "gradcam",
    explain_label: str | None = None,
    tta=None,
    top_k: int | None = None,
    metric: str | None = None,
) -> Path:
    """Write predictions.csv (path, prediction, prob_<class>…, with explain: the overlay's path) and, next
    to it, predictions.json (how the prediction was decided). The checkpoint's temperature scales the
    probabilities; for binary tasks its threshold decides the class, for multi-label tasks each label's
    threshold decides that label. explain_label: the class (label) whose heatmap is drawn for every image;
    None: the predicted class (multi-label: the top-scoring label)."""
    if explain:
        check_method(explain_method)
    ckpt_paths = checkpoint_paths(ckpt_path, top_k, metric)
    members = load_members(ckpt_paths)
    views = tta_views(tta)
    averaged = len(members) > 1 or len(views) > 1
    if explain and averaged:
        raise ConfigError(
            f"explain=true with {len(members)} checkpoint(s) and tta views {views}: Grad-CAM explains one "
            "model on one view; predict with one checkpoint and no tta to get overlays."
        )
    model = ensemble_model(members) if averaged else members[0]
    explained = explained_index(model, explain_label)
    prep = model.preprocessing
    window = window_from_config(model.hparams.get("data_config"))  # as the model was trained
    decode_options = {"window": window} if window is not None else {}
    found, unreadable_folders = find_images(input_path)
    paths, bad = check_inputs(found, window)
    bad.update(unreadable_folders)
    dataset = FileDataset(
        paths,
        np.zeros(len(paths), dtype=np.int64),
        prep["in_channels"],
        eval_transform(prep["image_size"], prep["mean"], prep["std"]),
        decode_options,
    )
    workers = default_num_workers(on_gpu=False) if num_workers == "auto" else int(num_workers)  # on the CPU
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=min(workers, max(0, len(paths) // batch_size))
    )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    explanations_dir = output.parent / "explanations"
    names, multilabel = model.class_names, model.task.multilabel
    rows = {path: {"path": path, "error": f.reason} for path, f in bad.items()}
    images = iter(paths)
    for x, _ in loader:
        with torch.inference_mode():
            if averaged:
                stack = torch.stack([m.probabilities(VIEWS[v](x)) for m in members for v in views])
                probs = stack.mean(0)
                spread = uncertainty(stack, multilabel).tolist()
            else:
                probs = model.probabilities(x)
        predicted = model.decide(probs)
        if explain:  # the heatmap of the explained class, over the original image (its own size)
            targets = explain_targets(model, probs, predicted, explained)
            maps = heatmaps(model, x, targets, explain_method)
        for i, (p, decision) in enumerate(zip(probs.tolist(), predicted.tolist(), strict=True)):
            path = next(images)
            row = rows[path] = {
                "path": path,
                "prediction": prediction_text(model, decision),
                **{f"prob_{c}": f"{v:.6f}" for c, v in zip(names, p, strict=True)},
            }
            if multilabel:
                row.update({f"pred_{c}": d for c, d in zip(names, decision, strict=True)})
            if averaged:
                row["uncertainty"] = f"{spread[i]:.6f}"
            if explain:
                target = overlay_path(path, input_path, explanations_dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(overlay(read_image(path, 3, **decode_options), maps[i])).save(target)
                row["explanation"] = str(target)
                if multilabel:
                    row["explained_label"] = names[targets[i]]
    columns = [
        "path",
        "prediction",
        *[f"prob_{c}" for c in names],
        *([f"pred_{c}" for c in names] if multilabel else []),
        *(["uncertainty"] if averaged else []),
        *(["explanation"] if explain else []),
        *(["explained_label"] if explain and multilabel else []),
        *(["error"] if bad else []),
    ]
    # written whole, after every prediction; names that are not UTF-8 as their bytes (surrogateescape)
    with atomic_open(output, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        writer.writerows(rows[path] for path in sorted(rows))
    settings = {
        "checkpoint": str(ckpt_paths[0]) if len(ckpt_paths) == 1 else [str(c) for c in ckpt_paths],
        "tta": views,
        "images": len(paths),
        "window": window,
        "unreadable": [
            {"path": shown_path(p), "reason": f.reason, "fix": f.fix} for p, f in sorted(bad.items())
        ],
        "decision": decision_text(model),
        "threshold": model.threshold,
        **(
            {"thresholds": dict(zip(model.class_names, model.thresholds.tolist(), strict=True))}
            if multilabel
            else {}
        ),
        # multi-label: one temperature per label
        "temperature": (
            dict(zip(model.class_names, model.temperature.tolist(), strict=True))
            if isinstance(model.temperature, torch.Tensor)
            else model.temperature
        ),
        "explanations": str(explanations_dir) if explain else None,
        "explain_method": explain_method if explain else None,
        "explain_label": explain_label if explain else None,
    }
    atomic_write_json(output.with_suffix(".json"), settings)
    return output


def explained_index(model, label: str | None) -> int | None:
    """The index of `explain_label` among the model's classes (labels); ConfigError for another name."""
    if label is None:
        return None
    if label not in model.class_names:
        raise ConfigError(
            f"explain_label={label!r}: not one of the checkpoint's labels ({', '.join(model.class_names)})."
        )
    return model.class_names.index(label)


def explain_targets(model, probs: torch.Tensor, predicted: torch.Tensor, label: int | None) -> list[int]:
    """The output each image's heatmap explains: `label` when given, else the predicted class, or for a
    multi-label model the top-scoring label."""
    if label is not None:
        return [label] * len(probs)
    return (probs.argmax(dim=1) if model.task.multilabel else predicted).tolist()


def prediction_text(model, decision) -> str:
    """The predicted class; multi-label: the predicted labels joined by | ("" for none)."""
    if model.task.multilabel:
        return "|".join(c for c, d in zip(model.class_names, decision, strict=True) if d)
    return model.class_names[decision]


def main() -> None:
    """Console entry point: overrides Hydra cannot parse get medtransfer's message first."""
    check_command_line()
    hydra_main()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def hydra_main(cfg: DictConfig) -> None:
    setup_logging()
    output = cfg.output or Path(cfg.paths.output_dir) / "predictions.csv"

    def job():
        written = predict(
            cfg.ckpt_path,
            cfg.input,
            output,
            cfg.batch_size,
            cfg.num_workers,
            explain=bool(cfg.get("explain", False)),
            explain_method=cfg.get("explain_method", "gradcam"),
            explain_label=cfg.get("explain_label"),
            tta=cfg.get("tta"),
            top_k=(cfg.get("ensemble") or {}).get("top_k"),
            metric=(cfg.get("ensemble") or {}).get("metric"),
        )
        settings = json.loads(written.with_suffix(".json").read_text())
        console.print(f"predictions: {written} (predicted class: {settings['decision']})")
        if settings["unreadable"]:
            console.print(
                f"[yellow]{len(settings['unreadable'])} file(s) could not be used and were not predicted: "
                "see the error column of predictions.csv[/yellow]"
            )

    run_job(job, cfg.paths.output_dir)


if __name__ == "__main__":
    main()
