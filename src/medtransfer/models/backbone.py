"""ResNet backbones from torchvision: construction, pretrained weights (named, local file or an earlier
medtransfer run), and adaptation of the stem to the data's channel count."""

from __future__ import annotations

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


def _check_name(name: str) -> None:
    if name not in RESNETS:
        raise ConfigError(
            f"model.backbone={name!r} is not a supported ResNet; choose one of {', '.join(RESNETS)}."
        )


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


def _read_local_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict, or the backbone of a medtransfer checkpoint (its head is dropped)."""
    if not path.is_file():
        raise ConfigError(
            f"model.weights={path}: no such file. Give a state dict (.pt/.pth) or a medtransfer .ckpt."
        )
    blob = load_checkpoint_file(path, key="model.weights")  # weights_only; damaged or pickled: ConfigError
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else blob
    prefix = "backbone."
    if any(k.startswith("model." + prefix) for k in state):  # a medtransfer checkpoint
        prefix = "model." + prefix
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


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
    to a state dict or a medtransfer checkpoint (whose head is dropped)."""
    _check_name(name)
    net = torchvision.models.get_model(name, weights=None)
    if weights is not None:
        if is_local_weights(weights):
            state = _read_local_state_dict(Path(weights))
        else:
            state = _download_state_dict(weights_enum(name, weights))
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        state["conv1.weight"] = adapt_input_conv(state["conv1.weight"], 3)  # loaded into the RGB stem first
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise ConfigError(
                f"model.weights={weights}: does not fit {name} (missing {missing[:3]}, unexpected {unexpected[:3]}). "
                f"Check model.backbone matches the backbone the weights were trained with."
            )
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
