"""Freezing strategies: which layer groups train at a given epoch, how BatchNorm behaves in frozen
groups, and each group's learning-rate scale (a multiple of the head's lr).

A strategy is generic over the group names its model declares (`bind`: ordered from the input to the
head, the head last), and a pure function of the epoch, so it is right after a resume and on every DDP
rank without any state of its own (the bugs of Lightning's BaseFinetuning come from keeping such state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from medtransfer.utils.errors import ConfigError


class FreezingStrategy:
    """Base: everything trains. Subclasses override `trainable`.

    bn: `frozen` (BatchNorm of frozen groups in eval mode: running statistics and affine parameters
        unchanged) or `train` (they keep normalizing with batch statistics and their affine parameters
        train, as fastai's train_bn).
    lr_mult: explicit multipliers of the head's lr per group name, e.g. {stem: 0.01}.
    layer_decay: geometric spread from the head down (timm's param_groups_layer_decay): group k below
        the head gets decay**k.
    lr_spread: fastai's slice(lr / lr_spread, lr): geometric from the first group (lr / lr_spread) to
        the head (Howard & Gugger, fastai, 2020).
    base_lr: the base lr the strategy is known to work with (fastai's 2e-3); the optimizer configs take
        it as their default lr (conf/optimizer/), it is not used here.
    Raises ConfigError for an unknown bn, several lr rules at once, or (at `bind`) unknown group names.
    """

    static = True  # the trainable set never changes during the run

    def __init__(
        self,
        bn: str = "frozen",
        lr_mult: Mapping[str, float] | None = None,
        layer_decay: float | None = None,
        lr_spread: float | None = None,
        base_lr: float | None = None,
    ):
        if bn not in ("frozen", "train"):
            raise ConfigError(f"finetune.bn={bn!r}: use 'frozen' or 'train'.")
        if sum(x is not None and x != {} for x in (lr_mult, layer_decay, lr_spread)) > 1:
            raise ConfigError("finetune: give at most one of lr_mult, layer_decay and lr_spread.")
        self.bn = bn
        self.lr_mult = dict(lr_mult or {})
        self.layer_decay = layer_decay
        self.lr_spread = lr_spread
        self.base_lr = base_lr
        self.groups: tuple[str, ...] = ()

    def bind(self, groups: Sequence[str]) -> FreezingStrategy:
        """Use the model's layer-group names, ordered from the input to the head (the last one)."""
        self.groups = tuple(groups)
        unknown = set(self.lr_mult) - set(self.groups)
        if unknown:
            raise ConfigError(
                f"finetune.lr_mult: unknown groups {sorted(unknown)}; groups are {list(self.groups)}."
            )
        return self

    @property
    def backbone_groups(self) -> tuple[str, ...]:
        """Every group but the head."""
        return self.groups[:-1]

    @property
    def head(self) -> str:
        return self.groups[-1]

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    def trainable(self, epoch: int) -> frozenset[str]:
        return frozenset(self.groups)

    def lr_scales(self) -> dict[str, float]:
        """Each group's lr as a multiple of the head's lr (the optimizer's base lr)."""
        depth = {g: len(self.groups) - 1 - i for i, g in enumerate(self.groups)}  # head 0 … first group
        if self.layer_decay is not None:
            return {g: float(self.layer_decay) ** depth[g] for g in self.groups}
        if self.lr_spread is not None:
            step = float(self.lr_spread) ** (1 / depth[self.groups[0]])
            return {g: step ** -depth[g] for g in self.groups}
        return {g: float(self.lr_mult.get(g, 1.0)) for g in self.groups}


class Full(FreezingStrategy):
    """Full fine-tuning: every group trains from the first step."""


class LinearProbe(FreezingStrategy):
    """Only the head trains; the backbone is a fixed feature extractor (BatchNorm in eval mode, and no
    backward pass through it)."""

    def __init__(self, **kwargs):
        kwargs["bn"] = "frozen"
        super().__init__(**kwargs)

    def trainable(self, epoch: int) -> frozenset[str]:
        return frozenset({self.head})


class Partial(FreezingStrategy):
    """`stem` … `frozen_until` stay frozen for the whole run; the groups above train."""

    def __init__(self, frozen_until: str = "layer2", **kwargs):
        super().__init__(**kwargs)
        self.frozen_until = frozen_until

    def bind(self, groups: Sequence[str]) -> FreezingStrategy:
        super().bind(groups)
        if self.frozen_until not in self.backbone_groups:
            raise ConfigError(
                f"finetune.frozen_until={self.frozen_until!r}: use one of {list(self.backbone_groups)}."
            )
        return self

    def trainable(self, epoch: int) -> frozenset[str]:
        return frozenset(self.groups[self.groups.index(self.frozen_until) + 1 :])


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
        return min(n, len(self.backbone_groups))

    def trainable(self, epoch: int) -> frozenset[str]:
        return frozenset(self.groups[len(self.backbone_groups) - self.unfrozen_count(epoch) :])


class FastAI(FreezingStrategy):
    """fastai's fine_tune: `freeze_epochs` epochs training the head, then everything, with learning
    rates spread geometrically over `lr_spread` (fastai's lr_mult=100) from the stem to the head."""

    static = False

    def __init__(self, freeze_epochs: int = 1, lr_spread: float | None = 100.0, **kwargs):
        super().__init__(lr_spread=lr_spread, **kwargs)
        self.freeze_epochs = freeze_epochs

    def trainable(self, epoch: int) -> frozenset[str]:
        return frozenset({self.head}) if epoch < self.freeze_epochs else frozenset(self.groups)
