"""Freezing strategies: which layer groups train at a given epoch, how BatchNorm behaves in frozen
groups, and each group's learning rate as a multiple of the head's.

A strategy is a pure function of the epoch, so it is right after a resume and on every DDP rank
without any state of its own (the bugs of Lightning's BaseFinetuning come from keeping such state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from medtransfer.models.anatomy import LAYER_GROUPS
from medtransfer.utils.errors import ConfigError

BACKBONE_GROUPS = LAYER_GROUPS[:-1]


class FreezingStrategy:
    """Base: everything trains. Subclasses override `trainable`.

    bn: `frozen` (BatchNorm of frozen groups in eval mode: running statistics and affine parameters
        unchanged) or `train` (they keep normalizing with batch statistics and their affine parameters
        train, as fastai's train_bn).
    lr_mult: explicit multipliers of the head's lr per group, e.g. {stem: 0.01, layer4: 0.3}.
    layer_decay: geometric spread from the head down (timm): group k below the head gets decay**k.
    lr_spread: fastai's slice(lr / lr_spread, lr): geometric from the stem (lr / lr_spread) to the head.
    """

    static = True  # the trainable set never changes during the run

    def __init__(
        self,
        bn: str = "frozen",
        lr_mult: Mapping[str, float] | None = None,
        layer_decay: float | None = None,
        lr_spread: float | None = None,
    ):
        if bn not in ("frozen", "train"):
            raise ConfigError(f"finetune.bn={bn!r}: use 'frozen' or 'train'.")
        if sum(x is not None and x != {} for x in (lr_mult, layer_decay, lr_spread)) > 1:
            raise ConfigError("finetune: give at most one of lr_mult, layer_decay and lr_spread.")
        unknown = set(lr_mult or {}) - set(LAYER_GROUPS)
        if unknown:
            raise ConfigError(
                f"finetune.lr_mult: unknown groups {sorted(unknown)}; groups are {list(LAYER_GROUPS)}."
            )
        self.bn = bn
        self.lr_mult = dict(lr_mult or {})
        self.layer_decay = layer_decay
        self.lr_spread = lr_spread

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    def trainable(self, epoch: int) -> frozenset[str]:
        return frozenset(LAYER_GROUPS)

    def lr_multipliers(self) -> dict[str, float]:
        """Each group's lr as a multiple of the head's lr."""
        depth = {g: len(LAYER_GROUPS) - 1 - i for i, g in enumerate(LAYER_GROUPS)}  # head 0 … stem 5
        if self.layer_decay is not None:
            return {g: float(self.layer_decay) ** depth[g] for g in LAYER_GROUPS}
        if self.lr_spread is not None:
            step = float(self.lr_spread) ** (1 / depth["stem"])
            return {g: step ** -depth[g] for g in LAYER_GROUPS}
        return {g: float(self.lr_mult.get(g, 1.0)) for g in LAYER_GROUPS}

    def describe(self) -> dict:
        return {"strategy": self.name, "bn": self.bn, "lr_mult": self.lr_multipliers()}


class Full(FreezingStrategy):
    """Full fine-tuning: every group trains from the first step."""


class LinearProbe(FreezingStrategy):
    """Only the head trains; the backbone is a fixed feature extractor (BatchNorm in eval mode, and no
    backward pass through it)."""

    def __init__(self, **kwargs):
        kwargs["bn"] = "frozen"
        super().__init__(**kwargs)

    def trainable(self, epoch: int) -> frozenset[str]:
        return frozenset({"head"})


class Partial(FreezingStrategy):
    """`stem` … `frozen_until` stay frozen for the whole run; the groups above train."""

    def __init__(self, frozen_until: str = "layer2", **kwargs):
        super().__init__(**kwargs)
        if frozen_until not in BACKBONE_GROUPS:
            raise ConfigError(f"finetune.frozen_until={frozen_until!r}: use one of {list(BACKBONE_GROUPS)}.")
        self.frozen_until = frozen_until

    def trainable(self, epoch: int) -> frozenset[str]:
        return frozenset(LAYER_GROUPS[BACKBONE_GROUPS.index(self.frozen_until) + 1 :])

    def describe(self) -> dict:
        return {**super().describe(), "frozen_until": self.frozen_until}


class Gradual(FreezingStrategy):
    """Gradual unfreezing (ULMFiT): the head first, then one more group from the head down every
    `every` epochs, or at each epoch listed in `at_epochs`."""

    static = False

    def __init__(self, every: int | None = 1, at_epochs: Sequence[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        if at_epochs is None and (every is None or every < 1):
            raise ConfigError("finetune: Gradual needs every >= 1 or a list at_epochs.")
        self.every = every
        self.at_epochs = sorted(int(e) for e in at_epochs) if at_epochs is not None else None

    def unfrozen_count(self, epoch: int) -> int:
        n = sum(epoch >= e for e in self.at_epochs) if self.at_epochs is not None else epoch // self.every
        return min(n, len(BACKBONE_GROUPS))

    def trainable(self, epoch: int) -> frozenset[str]:
        n = self.unfrozen_count(epoch)
        return frozenset(LAYER_GROUPS[len(BACKBONE_GROUPS) - n :])

    def describe(self) -> dict:
        return {**super().describe(), "every": self.every, "at_epochs": self.at_epochs}


class FastAI(FreezingStrategy):
    """fastai's fine_tune: `freeze_epochs` epochs training the head, then everything, with learning
    rates spread geometrically over `lr_spread` (fastai's lr_mult=100) from the stem to the head."""

    static = False

    def __init__(self, freeze_epochs: int = 1, lr_spread: float | None = 100.0, **kwargs):
        super().__init__(lr_spread=lr_spread, **kwargs)
        self.freeze_epochs = freeze_epochs

    def trainable(self, epoch: int) -> frozenset[str]:
        return frozenset({"head"}) if epoch < self.freeze_epochs else frozenset(LAYER_GROUPS)

    def describe(self) -> dict:
        return {**super().describe(), "freeze_epochs": self.freeze_epochs}
