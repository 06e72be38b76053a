"""ResNet backbones from torchvision: construction, pretrained weights (named, local file or an earlier
medtransfer run), and adaptation of the stem to the data's channel count."""

from __future__ import annotations

import logging
import os
import socket
import urllib.error
from pathlib import Path

import torch
import torchvision
from torch import nn

from medtransfer.utils.checkpoint_io import load_checkpoint_file
from medtransfer.utils.errors import ConfigError, WeightsUnavailableError
from medtransfer.utils.normalization import IMAGENET_MEAN, IMAGENET_STD, for_channels

RESNETS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)
DOWNLOAD_TIMEOUT_S = 20


def is_local_weights(weights: str | None) -> bool:
    return weights is not None and (
        os.sep in str(weights) or Path(str(weights)).suffix in {".pt", ".pth", ".ckpt"}
    )


def weights_enum(name: str, weights: str):
    """The torchvision weight enum member for `weights` (`DEFAULT`, `IMAGENET1K_V1`, ...)."""
    enum = torchvision.models.get_model_weights(name)
    if weights == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[weights]
    except KeyError:
        names = ", ".join(["DEFAULT", *enum.__members__])
        raise ConfigError(
            f"model.weights={weights!r} is not a weight of {name}; use one of {names}, null, or a file path."
        ) from None


def normalization(name: str, weights: str | None, in_channels: int) -> tuple[list[float], list[float]]:
    """Mean and std the backbone expects: from the weights' own preset when they are torchvision's,
    ImageNet statistics otherwise; averaged over channels for a 1-channel stem."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if weights is not None and not is_local_weights(weights):
        preset = weights_enum(name, weights).transforms()
        mean, std = tuple(preset.mean), tuple(preset.std)
    return for_channels(mean, std, in_channels)


def _download_state_dict(weights) -> dict[str, torch.Tensor]:
    filename = Path(weights.url).name
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise WeightsUnavailableError(
            f"Cannot download the pretrained weights {weights} ({err.__class__.__name__}: {err}).\n"
            f"  Put the file {filename} (from {weights.url}) into {cache}/ and run again,\n"
            f"  or pass a local file: model.weights=/path/to/{filename},\n"
            f"  or train from scratch: model.weights=null"
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)


# Where other trainers keep a ResNet's weights, most specific first: MoCo (DataParallel or not),
# medtransfer / Lightning modules (`backbone.`, `model.backbone.`), self-supervised encoders (`encoder.`),
# generic wrappers (`model.`) and DataParallel / DDP (`module.`).
KNOWN_PREFIXES = (
    "module.encoder_q.",
    "encoder_q.",
    "module.model.backbone.",
    "model.backbone.",
    "module.backbone.",
    "backbone.",
    "module.encoder.",
    "encoder.",
    "module.model.",
    "model.",
    "module.",
)
# keys under which checkpoints nest the state dict (Lightning/MoCo `state_dict`, DeiT/DINO `model`, ...)
NESTING_KEYS = ("state_dict", "model", "model_state_dict", "net")
# a state dict may lack these: they are counters, not weights
OPTIONAL_SUFFIXES = ("num_batches_tracked",)

log = logging.getLogger(__name__)


def _first_keys(keys, n: int = 5) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", … ({len(keys)} in all)" if len(keys) > n else "")


def _read_local_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of a weights file and where they were found (`"the file"`, `"['state_dict']"`, ...).

    Accepts a plain state dict, a checkpoint nesting one under `state_dict`, `model`, `model_state_dict`
    or `net` (Lightning, MoCo, DINO ...), and a medtransfer checkpoint. Prefixes are not stripped here
    (see `match_state_dict`). Raises ConfigError for a missing file or one that holds no tensors."""
    if not path.is_file():
        raise ConfigError(
            f"model.weights={path}: no such file. Give a state dict (.pt/.pth) or a medtransfer .ckpt."
        )
    blob = load_checkpoint_file(path, key="model.weights")  # weights_only; damaged or pickled: ConfigError
    where = "the file"
    while isinstance(blob, dict) and not any(isinstance(v, torch.Tensor) for v in blob.values()):
        key = next((k for k in NESTING_KEYS if isinstance(blob.get(k), dict)), None)
        if key is None:
            break
        blob, where = blob[key], ("" if where == "the file" else where) + f"[{key!r}]"
    state = {k: v for k, v in blob.items() if isinstance(v, torch.Tensor)} if isinstance(blob, dict) else {}
    if not state:
        found = _first_keys(blob) if isinstance(blob, dict) else type(blob).__name__
        raise ConfigError(
            f"model.weights={path}: no tensors found (top-level keys: {found}). Give a state dict, or a "
            f"checkpoint nesting one under one of {', '.join(NESTING_KEYS)}."
        )
    return state, where


def match_state_dict(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str, name: str
) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of `state` renamed and checked to load into a network whose state dict is `expected`,
    and a one-line report of what was done.

    The prefix (one of KNOWN_PREFIXES, or none) under which most keys match `expected` is stripped; keys
    outside it (a MoCo key encoder, a queue) and the classifier `fc.*` are left out. A 1-channel stem
    (`conv1.weight` of a grayscale medtransfer run) is expanded to the 3-channel one first. Raises
    ConfigError, naming the first keys found and the fix, when nothing matches, a weight is missing or
    unexpected, or a shape differs."""
    wanted = {k for k in expected if not k.startswith("fc.")}
    best_prefix, best = "", {}
    for prefix in ("", *KNOWN_PREFIXES):
        stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if len(wanted & stripped.keys()) > len(wanted & best.keys()):
            best_prefix, best = prefix, stripped
    fix = (
        f"Give weights of a torchvision-style {name} (keys such as conv1.weight, layer1.0.conv1.weight), "
        f"with model.backbone set to the architecture they were trained with, or model.weights=null."
    )
    if not wanted & best.keys():
        raise ConfigError(
            f"{source}: no {name} weights recognised (first keys: {_first_keys(state)}; prefixes tried: "
            f"{', '.join(KNOWN_PREFIXES)}). {fix}"
        )
    head = [k for k in best if k.startswith("fc.")]
    best = {k: v for k, v in best.items() if not k.startswith("fc.")}
    if "conv1.weight" in best and best["conv1.weight"].ndim == 4:
        best["conv1.weight"] = adapt_input_conv(best["conv1.weight"], expected["conv1.weight"].shape[1])
    missing = [
        k for k in expected if k not in best and not k.startswith("fc.") and not k.endswith(OPTIONAL_SUFFIXES)
    ]
    unexpected = [k for k in best if k not in expected]
    mismatched = [
        f"{k} {tuple(best[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in best
        if k in expected and best[k].shape != expected[k].shape
    ]
    stripped_text = f"prefix {best_prefix!r} stripped" if best_prefix else "no prefix"
    if missing or unexpected or mismatched:
        problems = [
            f"missing {_first_keys(missing, 3)}" if missing else "",
            f"unexpected {_first_keys(unexpected, 3)}" if unexpected else "",
            f"shapes differ: {_first_keys(mismatched, 3)}" if mismatched else "",
        ]
        raise ConfigError(
            f"{source}: does not fit {name} ({stripped_text}; {'; '.join(p for p in problems if p)}). "
            f"First keys in the file: {_first_keys(state, 3)}. {fix}"
        )
    left_out = len(state) - len(best) - len(head)
    report = (
        f"{source}: loaded {len(best)} tensors into {name} from {stripped_text}"
        + (f", {len(head)} classifier (fc) tensors left out" if head else "")
        + (f", {left_out} tensors outside the prefix ignored" if left_out else "")
        + "."
    )
    return best, report


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt stem filters to `in_channels` (as timm's adapt_input_conv): summed over the input channels
    for 1 channel, so a grayscale image gives what the RGB filters give on it copied to 3 channels;
    tiled and rescaled for any other count."""
    have = weight.shape[1]
    if have == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // have)
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (have / in_channels)


def build_backbone(name: str, weights: str | None = None, in_channels: int = 3) -> tuple[nn.Module, int]:
    """A torchvision ResNet without its classifier (`fc` is Identity) and its feature width.

    weights: None (random init), a torchvision weight name (`DEFAULT`, `IMAGENET1K_V1`, ...), or a path
    to a state dict or a checkpoint: a medtransfer one (whose head is dropped), or one saved by
    DataParallel or self-supervised training (prefixes such as `module.encoder_q.` are stripped and
    reported, see `match_state_dict`). Raises ConfigError for weights that do not fit, naming the keys."""
    if name not in RESNETS:
        raise ConfigError(
            f"model.backbone={name!r} is not a supported ResNet; choose one of {', '.join(RESNETS)}."
        )
    net = torchvision.models.get_model(name, weights=None)
    if weights is not None:
        if is_local_weights(weights):
            state, where = _read_local_state_dict(Path(weights))
            source = f"model.weights={weights}" + ("" if where == "the file" else f" {where}")
            state, report = match_state_dict(state, net.state_dict(), source, name)
            log.info(report)
        else:
            state = _download_state_dict(weights_enum(name, weights))
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        net.load_state_dict(state, strict=False)  # checked above: only fc (replaced below) is missing
    if in_channels != 3:
        old = net.conv1
        net.conv1 = nn.Conv2d(
            in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
        )
        with torch.no_grad():
            net.conv1.weight.copy_(adapt_input_conv(old.weight, in_channels))
    num_features = net.fc.in_features
    net.fc = nn.Identity()
    return net, num_features
