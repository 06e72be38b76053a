"""Several checkpoints and test-time augmentation as one predictor: probabilities averaged over members
(checkpoints) and views (flips, rotations of the input), with the spread among them as an uncertainty.

Averaging probabilities (not logits) over members is the deep-ensemble average of Lakshminarayanan,
Pritzel and Blundell, NeurIPS 2017; over flipped / rotated views it is test-time augmentation (e.g.
Wang et al., Neurocomputing 2019, who also use the spread across views as an uncertainty). Each member's
own temperature is applied before averaging; the ensemble's threshold is the mean of its members'
thresholds (each fitted on that member's validation split), said in its decision text: it is not refitted
on the ensemble's own probabilities."""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from medtransfer.models.checkpoint import load_classifier
from medtransfer.models.classifier import Classifier
from medtransfer.utils.errors import ConfigError

log = logging.getLogger(__name__)

# name -> a view of a batch (N, C, H, W); every view keeps the shape (images are square)
VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "rot90": lambda x: torch.rot90(x, 1, dims=(-2, -1)),
    "rot180": lambda x: torch.rot90(x, 2, dims=(-2, -1)),
    "rot270": lambda x: torch.rot90(x, 3, dims=(-2, -1)),
}


def tta_views(tta: Sequence[str] | str | None) -> list[str]:
    """The views of `tta` (e.g. ["hflip", "vflip", "rot90"]), identity first and always included, each
    once. ConfigError naming an unknown view."""
    if tta is None:
        tta = []
    if isinstance(tta, str):
        tta = [t for t in tta.replace("[", "").replace("]", "").split(",") if t.strip()]
    names = ["identity"]
    for name in (str(t).strip() for t in tta):
        if name not in VIEWS:
            raise ConfigError(
                f"tta={list(tta)}: {name!r} is not a view; use some of {', '.join(VIEWS)}, e.g. tta=[hflip]."
            )
        if name not in names:
            names.append(name)
    return names


def checkpoint_paths(ckpt_path, top_k: int | None = None, metric: str | None = None) -> list[Path]:
    """The checkpoints `ckpt_path` names: a file; a list of files; a run dir (its checkpoints/best.ckpt);
    or a sweep / cross-validation dir (every <job>/checkpoints/best.ckpt below it, in job order). top_k:
    keep the k jobs best by their metrics.json's `<metric>_best` (the optimized metric, e.g. val/auroc).
    ConfigError when nothing is found."""
    several = hasattr(ckpt_path, "__iter__") and not isinstance(ckpt_path, str | Path)  # a list, a ListConfig
    given = list(ckpt_path) if several else [ckpt_path]
    paths: list[Path] = []
    for item in given:
        path = Path(str(item)).expanduser()
        if path.is_dir():
            own = path / "checkpoints" / "best.ckpt"
            found = (
                [own]
                if own.is_file()
                else sorted(
                    path.glob("**/checkpoints/best.ckpt"),
                    key=lambda p: (
                        len(p.parts),
                        int(p.parent.parent.name) if p.parent.parent.name.isdigit() else math.inf,
                        str(p),
                    ),
                )
            )
            if not found:
                raise ConfigError(
                    f"ckpt_path={path}: a folder without checkpoints/best.ckpt in it or below it; give a "
                    "checkpoint, a run dir or a sweep / cross-validation dir of medtransfer-train."
                )
            paths += found
        else:
            paths.append(path)
    if top_k:
        paths = _top_k(paths, int(top_k), metric or "val/auroc")
    return paths


def _top_k(paths: list[Path], k: int, metric: str) -> list[Path]:
    if k < 1:
        raise ConfigError(f"ensemble.top_k={k}: keep at least 1 member (null: all).")
    key = f"{metric}_best"
    scored = []
    for path in paths:
        metrics_file = path.parent.parent / "metrics.json"
        value = json.loads(metrics_file.read_text()).get(key) if metrics_file.is_file() else None
        if value is None or not math.isfinite(value):
            raise ConfigError(
                f"ensemble.top_k={k}: {metrics_file} has no finite {key}; choose the members yourself "
                "(ckpt_path=[a.ckpt,b.ckpt]) or set ensemble.metric to a metric every run has."
            )
        scored.append((value, path))
    return [p for _, p in sorted(scored, key=lambda s: -s[0])[:k]]


def load_members(paths: Sequence[Path]) -> list[Classifier]:
    """The classifiers, checked to be interchangeable: the same classes, task and preprocessing
    (ConfigError naming the first one that differs)."""
    members = [load_classifier(p) for p in paths]
    first = members[0]
    for path, model in zip(paths[1:], members[1:], strict=True):
        for what, a, b in (
            ("classes", first.class_names, model.class_names),
            ("task", first.task.name, model.task.name),
            ("preprocessing", first.preprocessing, model.preprocessing),
        ):
            if a != b:
                raise ConfigError(
                    f"ckpt_path: {path} has {what} {b}, {paths[0]} has {a}; an ensemble averages models of "
                    "one task with one input: give checkpoints trained on the same data and image size."
                )
    return members


def ensemble_model(members: Sequence[Classifier]) -> Classifier:
    """A stand-in for averaged probabilities in the reports: the first member, with no temperature (the
    members' own are applied before averaging) and the mean of the members' thresholds."""
    model = copy.copy(members[0])  # shares the weights: used only for its task, names and decision
    model.calibration = None
    ops = [m.operating_point for m in members]
    if all(op is None for op in ops):
        model.operating_point = None
    elif model.task.multilabel:
        thresholds = torch.stack([m.thresholds for m in members]).mean(0).tolist()
        model.operating_point = {
            "rule": f"mean of the {len(members)} members' thresholds",
            "thresholds": dict(zip(model.class_names, thresholds, strict=True)),
        }
    else:
        values = [op.get("threshold") for op in ops if op and op.get("threshold") is not None]
        if len(values) != len(members):
            model.operating_point = None
            log.warning(
                "ensemble: not every member has a threshold; the ensemble predicts the most probable class."
            )
        else:
            model.operating_point = {
                **ops[0],
                "rule": f"mean of the {len(members)} members' thresholds ({ops[0].get('rule')} each)",
                "threshold": float(sum(values) / len(values)),
            }
    return model


def as_logits(probs: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Logits whose activation (softmax; multi-label: sigmoid) gives back `probs` (N, C): log p, or
    log(p / (1 - p)); clamped away from 0 and 1. For the reports, which take logits."""
    p = probs.double().clamp(1e-12, 1 - 1e-12)
    return (torch.log(p / (1 - p)) if multilabel else torch.log(p)).float()


def uncertainty(stack: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """(N,) spread of the probabilities over members × views, stack (M, N, C): the standard deviation
    (ddof=0) of the positive class (binary), else the mean over classes (labels) of each one's std.
    0 for a single member and view."""
    std = stack.double().std(dim=0, correction=0)
    if not multilabel and stack.shape[2] == 2:
        return std[:, 1].float()
    return std.mean(dim=1).float()


def predict_views(
    members: Sequence[Classifier], loader, views: Sequence[str], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probs (N, C) averaged over members × views, targets, stack (M·V, N, C) of each member's
    probabilities in each view)."""
    stack, targets = [], None
    for model in members:
        model.to(device)
        for name in views:
            view = VIEWS[name]
            logits, targets = model.collect_logits((view(x), y) for x, y in loader)
            stack.append(model.probabilities_of(logits))
        model.cpu()
    stack_t = torch.stack(stack)
    return stack_t.mean(0), targets, stack_t
