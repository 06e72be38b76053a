"""Per-channel normalization statistics: ImageNet's (torchvision's presets), and their form for any
channel count."""

from __future__ import annotations

from collections.abc import Sequence

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def for_channels(
    mean: Sequence[float], std: Sequence[float], channels: int
) -> tuple[list[float], list[float]]:
    """RGB statistics for `channels` input channels: as given for 3, their average for every other count
    (a 1-channel stem sums the RGB filters, so it sees the average of the three channels)."""
    if channels == 3:
        return list(mean), list(std)
    return [sum(mean) / 3] * channels, [sum(std) / 3] * channels
