"""Explanations: Grad-CAM and Grad-CAM++ heatmaps (the maintained `grad-cam` package, imported as
`pytorch_grad_cam`) on the layer the model declares for it (`model.explanation_layer`: for a ResNet the
last block), and their overlay on an image.

A heatmap says which regions of the image raised the score (logit) of one class; its resolution is that
of the explained layer (for a ResNet the input side / 32), upsampled to the image. It shows where the
network looked, not why (Selvaraju et al., ICCV 2017; Grad-CAM++: Chattopadhay et al., WACV 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medtransfer.utils.errors import ConfigError

EXPLAIN_METHODS = ("gradcam", "gradcam++")


def check_method(method: str) -> None:
    if method not in EXPLAIN_METHODS:
        raise ConfigError(f"explain method {method!r}: use one of {', '.join(EXPLAIN_METHODS)}.")


def _cam_class(method: str):
    check_method(method)
    # imported here: the package pulls in OpenCV, SciPy and scikit-learn (seconds to import)
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

    return {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}[method]


class _Logits(nn.Module):
    """The classifier's logits with gradients through the backbone also when its training froze it
    (`Classifier.features` runs a frozen backbone without a graph)."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.head(self.classifier.backbone(x))


def heatmaps(
    model: nn.Module, images: torch.Tensor, classes: Sequence[int], method: str = "gradcam"
) -> np.ndarray:
    """One heatmap per image for the class given for it: (B, H, W) float in [0, 1] at the input's size.
    `images`: the normalised network input (B, C, H, W) on the model's device. The model is left in the
    mode it was in, with no gradients kept."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_class = _cam_class(method)
    was_training = model.training
    wrapper = _Logits(model)
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    trainable = [p for p in model.parameters() if p.requires_grad]

    def leaf_output(module, args, output):  # the gradient stops at the explained layer: nothing before it
        return output.detach().requires_grad_(True)  # is differentiated, and no weight gets a gradient

    handle = model.explanation_layer.register_forward_hook(leaf_output)  # before the CAM's own hooks
    try:
        for p in trainable:
            p.requires_grad_(False)
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            cam_class(model=wrapper, target_layers=[model.explanation_layer]) as cam,
        ):
            maps = cam(input_tensor=images.detach().clone(), targets=targets)
    finally:
        handle.remove()
        for p in trainable:
            p.requires_grad_(True)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return np.asarray(maps, dtype=np.float32)


def overlay(image: np.ndarray | torch.Tensor, heatmap: np.ndarray, image_weight: float = 0.55) -> np.ndarray:
    """The heatmap (any size, values in [0, 1]) resized to `image` and blended over it with the JET colour
    map. image: uint8 (H, W), (H, W, 3) or a (C, H, W) tensor. Returns uint8 (H, W, 3)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    if isinstance(image, torch.Tensor):
        image = image.permute(1, 2, 0).cpu().numpy() if image.ndim == 3 else image.cpu().numpy()
    image = np.atleast_3d(image)  # (H, W) -> (H, W, 1)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    height, width = image.shape[:2]
    mask = torch.as_tensor(heatmap, dtype=torch.float32)[None, None]
    mask = F.interpolate(mask, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    rgb = image.astype(np.float32) / 255.0
    return show_cam_on_image(rgb, mask.clamp(0, 1).numpy(), use_rgb=True, image_weight=image_weight)
