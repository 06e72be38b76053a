"""The LightningModule: a backbone, a replaceable head, the anatomy they declare, and the training and
evaluation steps. Its hyper-parameters are plain data (a checkpoint rebuilds the model from them alone);
the optimizer, scheduler and freezing strategy are ready objects passed in by the entry point."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import NamedTuple

import lightning as L
import torch
from torchmetrics import MaxMetric, MinMetric

from medtransfer.evaluation.multilabel import thresholds_of
from medtransfer.evaluation.tasks import task_for
from medtransfer.finetune.freezing import freeze_norm_statistics, set_trainable
from medtransfer.finetune.param_groups import apply_lr_scales, param_groups
from medtransfer.finetune.strategies import FreezingStrategy, Full
from medtransfer.finetune.summary import layer_group_rows
from medtransfer.models.anatomy import ANATOMIES
from medtransfer.models.backbone import build_backbone, normalization
from medtransfer.models.heads import build_head
from medtransfer.models.inference import outputs
from medtransfer.utils.console import print_table
from medtransfer.utils.errors import ConfigError, NonFiniteLossError


class BestValidationOutputs(NamedTuple):
    """The validation epoch that set the best value of the monitored metric: its epoch, that value, and the
    raw logits (N, classes) and targets (N,) or (N, labels) it computed, on the CPU, in loader order."""

    epoch: int
    score: float
    logits: torch.Tensor
    targets: torch.Tensor


# the version of what a checkpoint stores (hyper-parameters and the medtransfer section); 2: plain data
CHECKPOINT_FORMAT = 2


class Classifier(L.LightningModule):
    """Image classifier for transfer learning.

    backbone: a torchvision ResNet name. weights: torchvision weight name, None, or a file.
    head: {"name": linear | mlp, **its arguments} (models/heads.py).
    task: binary | multiclass (softmax over the classes) | multilabel (a sigmoid per label, class_names are
    the labels); None: binary for 2 classes, else multiclass (evaluation/tasks.py).
    class_weights: None, "auto" (inverse class frequency, from `class_counts`) or one weight per class
    (single-label tasks).
    pos_weight: multilabel tasks: None, "auto" (negatives / positives per label on train, from
    `class_counts` = positives and `known_counts` = known values per label) or one weight per label; the
    weight of each label's positive term in the binary cross-entropy.
    monitor / monitor_mode: the optimized metric; its best value is logged as `<monitor>_best`.
    channels_last: weights and image batches in channels-last memory format (faster convolutions on GPUs
    with tensor cores); the state dict is the same either way.
    compile: compile the backbone with torch.compile: True, or a mapping of its keyword arguments
    (e.g. {"mode": "max-autotune"}); compiled in place, so the state dict keys do not change.
    optimizer: a callable taking param groups (a Hydra partial, e.g. AdamW with its lr and weight decay).
    scheduler: a callable (optimizer, total_steps) → Lightning lr-scheduler dict (finetune/schedulers.py).
    finetune: the freezing strategy (finetune/strategies.py); everything trains when None.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        weights: str | None = None,
        num_classes: int = 2,
        in_channels: int = 3,
        class_names: Sequence[str] | None = None,
        task: str | None = None,
        head: Mapping | None = None,
        class_weights: str | Sequence[float] | None = None,
        class_counts: Sequence[int] | None = None,
        pos_weight: str | Sequence[float] | None = None,
        known_counts: Sequence[int] | None = None,
        label_smoothing: float = 0.0,
        image_size: int = 224,
        monitor: str = "val/auroc",
        monitor_mode: str = "max",
        data_config: Mapping | None = None,
        channels_last: bool = False,
        compile: bool | Mapping = False,  # shadows the builtin: it is the config key model.compile
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        finetune: FreezingStrategy | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "finetune"])
        self.class_names = list(class_names or [str(i) for i in range(num_classes)])
        if len(self.class_names) != num_classes:
            raise ConfigError(f"{len(self.class_names)} class names for num_classes={num_classes}.")
        self.task = task_for(task, num_classes)
        mean, std = normalization(backbone, weights, in_channels)
        self.preprocessing = {"image_size": image_size, "in_channels": in_channels, "mean": mean, "std": std}

        self.backbone, num_features = build_backbone(backbone, weights, in_channels)
        self.head = build_head(head, num_features, num_classes)
        anatomy = ANATOMIES["resnet"](self.backbone, self.head)
        self.groups, self.explanation_layer = anatomy.groups, anatomy.explanation_layer
        self.optimizer_factory = optimizer or partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05)
        self.scheduler_factory = scheduler
        self.strategy = (finetune or Full()).bind(list(self.groups))
        self.register_buffer(
            "loss_weights", self._loss_weights(class_weights, class_counts), persistent=False
        )
        self.register_buffer(
            "pos_weight", self._pos_weight(pos_weight, class_counts, known_counts), persistent=False
        )
        # the first step whose training loss was NaN/Inf (-1: none), a tensor on the loss's device (not a
        # buffer: DDP would broadcast it); see check_finite_loss
        self.first_nonfinite_step: torch.Tensor | None = None

        self.trainable_groups = frozenset(self.groups)
        if self.strategy.static:  # frozen before DDP wraps the model, so DDP never sees those parameters
            self.set_trainable(self.strategy.trainable(0))
        if channels_last:
            self.to(memory_format=torch.channels_last)
        if not isinstance(compile, bool | Mapping):
            raise ConfigError(
                f"model.compile={compile!r}: use true, false, or torch.compile's arguments as a mapping, "
                "e.g. model.compile={mode:max-autotune}."
            )
        if compile:  # in place (nn.Module.compile): no `_orig_mod.` in the state dict keys
            self.backbone.compile(**({} if compile is True else dict(compile)))

        self.val_metrics = self.task.metrics(num_classes, "val/", self.class_names)
        self.test_metrics = self.task.metrics(num_classes, "test/", self.class_names)
        self.best_metric = MaxMetric() if monitor_mode == "max" else MinMetric()
        # fitted on the validation split after training (callbacks/fit_on_validation.py), kept in the
        # checkpoint: {"temperature", "val_ece_before", "val_ece_after"} and {"rule", "threshold", ...}
        self.calibration: dict | None = None
        self.operating_point: dict | None = None
        # the raw logits and targets of this validation epoch, and those of the epoch that set the best
        # value of the monitored metric (what the end-of-fit callbacks reuse: models/checkpoint.py)
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.best_val_outputs: BestValidationOutputs | None = None

    # ---------------------------------------------------------------- model
    def _loss_weights(self, class_weights, class_counts) -> torch.Tensor | None:
        if class_weights is None:
            return None
        if self.task.multilabel:
            raise ConfigError(
                "model.class_weights is for single-label tasks (one class per image); for multi-label "
                "data use model.pos_weight=auto (or one weight per label), and model.class_weights=null."
            )
        if class_weights == "auto":
            if not class_counts:
                raise ConfigError("model.class_weights=auto needs the training class counts from the data.")
            counts = torch.tensor(class_counts, dtype=torch.float32).clamp(min=1)
            return counts.sum() / (len(counts) * counts)
        weights = torch.tensor(list(class_weights), dtype=torch.float32)
        if len(weights) != self.hparams.num_classes:
            raise ConfigError(
                f"model.class_weights has {len(weights)} values for {self.hparams.num_classes} classes."
            )
        return weights

    def _pos_weight(self, pos_weight, class_counts, known_counts) -> torch.Tensor | None:
        if pos_weight is None:
            return None
        if not self.task.multilabel:
            raise ConfigError(
                f"model.pos_weight={pos_weight!r} is for multi-label tasks; for {self.task.name} data use "
                "model.class_weights (and model.pos_weight=null)."
            )
        if pos_weight == "auto":
            if not class_counts or not known_counts:
                raise ConfigError("model.pos_weight=auto needs the training label counts from the data.")
            positives = torch.tensor(class_counts, dtype=torch.float32)
            negatives = torch.tensor(known_counts, dtype=torch.float32) - positives
            return negatives.clamp(min=1) / positives.clamp(min=1)
        weights = torch.tensor(list(pos_weight), dtype=torch.float32)
        if len(weights) != self.hparams.num_classes:
            raise ConfigError(
                f"model.pos_weight has {len(weights)} values for {self.hparams.num_classes} labels; give "
                "one per label (in data_summary.json's label order) or auto."
            )
        return weights

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:  # a no-op for batches already in that layout
            x = x.contiguous(memory_format=torch.channels_last)
        if self.backbone_frozen:  # linear probing: no graph, no backward through the backbone
            with torch.no_grad():
                return self.backbone(x)
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, classes) of images (N, C, H, W), or of backbone features (N, F) computed before (the
        cached features a linear probe trains on: features/)."""
        return self.head(x if x.ndim == 2 else self.features(x))

    # ------------------------------------------- calibration and decision
    @property
    def temperature(self) -> float | torch.Tensor:
        """The logits are divided by it before the softmax (1: not calibrated); multi-label tasks: (L,),
        one per label."""
        if not self.calibration:
            return 1.0
        value = self.calibration["temperature"]
        return torch.tensor(value) if isinstance(value, list | tuple) else float(value)

    @property
    def threshold(self) -> float | None:
        """Binary tasks: class 1 is predicted when its probability ≥ this; None: the most probable class."""
        if self.task.name != "binary" or not self.operating_point:
            return None
        return self.operating_point.get("threshold")

    @property
    def thresholds(self) -> torch.Tensor | None:
        """Multi-label tasks: (L,) the threshold of each label (0.5 where none was fitted); else None."""
        if not self.task.multilabel:
            return None
        return thresholds_of(self.operating_point, self.class_names)

    def probabilities_of(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities of raw logits as the model is deployed: softmax(logits / temperature), or for
        multi-label tasks sigmoid(logits / temperature of each label)."""
        return self.task.probabilities(logits, self.temperature)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class (label) probabilities of images as the model is deployed (`probabilities_of`)."""
        return self.probabilities_of(self(x))

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        """The decision on each row of `probs`: the class (N,): class 1 at probability ≥ threshold (binary
        tasks with a chosen threshold), otherwise the most probable class; multi-label tasks: (N, L) 0/1,
        each label at probability ≥ its threshold (evaluation/tasks.py)."""
        return self.task.decide(probs, self.operating_point, self.class_names)

    def collect_logits(
        self, loader, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw logits (before the temperature) and targets of every batch of `loader`, in eval mode (the
        mode is restored after), with no logging and no metric state touched."""
        return outputs(self, loader, device if device is not None else self.device)

    # ------------------------------------------------------------- freezing
    @property
    def backbone_frozen(self) -> bool:
        return self.strategy.bn == "frozen" and self.trainable_groups <= {self.strategy.head}

    def set_trainable(self, groups: frozenset[str]) -> None:
        """Train exactly `groups` (finetune/freezing.py)."""
        self.trainable_groups = frozenset(groups)
        set_trainable(self.groups, self.trainable_groups, self.strategy.bn)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.strategy.bn == "frozen":
            freeze_norm_statistics(self.groups, self.trainable_groups)
        return self

    def on_train_start(self) -> None:
        rows = layer_group_rows(
            self.groups, self.optimizers().optimizer, self.strategy.trainable(self.current_epoch)
        )
        print_table(f"layer groups ({self.strategy.name}, bn={self.strategy.bn})", rows)

    def on_train_epoch_start(self) -> None:
        if not self.strategy.static:
            self.set_trainable(self.strategy.trainable(self.current_epoch))
        trainable = {f"trainable/{n}": float(n in self.trainable_groups) for n in self.groups}
        self.log_dict(trainable, on_step=False, on_epoch=True, sync_dist=False)

    # ------------------------------------------------------------ optimizer
    def configure_optimizers(self):
        """The optimizer over the layer groups' param groups, each group's lr = base lr × its scale."""
        optimizer = apply_lr_scales(
            self.optimizer_factory(param_groups(self.groups, self.strategy.lr_scales()))
        )
        if self.scheduler_factory is None:
            return optimizer
        total_steps = int(self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer, total_steps)}

    # --------------------------------------------------------------- steps
    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (single-label) or masked binary cross-entropy (multi-label): evaluation/tasks.py."""
        return self.task.loss(
            logits,
            y,
            weight=self.loss_weights,
            label_smoothing=self.hparams.label_smoothing,
            pos_weight=self.pos_weight,
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss(self(x), y)
        # recorded on the device, not checked here: a check is a host-device sync on every step
        seen = self.first_nonfinite_step
        if seen is None:
            seen = torch.full((), -1, dtype=torch.long, device=loss.device)
        self.first_nonfinite_step = torch.where(
            ~torch.isfinite(loss.detach()) & (seen < 0), self.global_step, seen
        )
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """The loss is checked every trainer.log_every_n_steps (when the logger syncs anyway) and at the
        end of each epoch, before the epoch's checkpoints are written."""
        if self.trainer.is_last_batch or (batch_idx + 1) % max(1, self.trainer.log_every_n_steps) == 0:
            self.check_finite_loss()

    @property
    def loss_diverged(self) -> bool:
        return self.first_nonfinite_step is not None and bool(self.first_nonfinite_step >= 0)

    def check_finite_loss(self) -> None:
        if self.loss_diverged:
            step = int(self.first_nonfinite_step)
            raise NonFiniteLossError(
                f"The training loss became NaN or infinite at step {step} (checked at epoch "
                f"{self.current_epoch}, step {self.global_step}): the run stops here and keeps its last good "
                "checkpoint (checkpoints/last.ckpt). Lower optimizer.lr, set trainer.gradient_clip_val=1.0, "
                "or check the data for broken images."
            )

    def _eval_step(self, batch, split: str) -> dict[str, torch.Tensor]:
        """The step's raw logits and targets (what the test report gathers: callbacks/test_report.py)."""
        x, y = batch
        logits = self(x).float()
        # the temperature is 1 until calibration; val/test loss is that of the deployed model
        scaled = self.task.scale(logits, self.temperature)
        self.log(f"{split}/loss", self.loss(scaled, y), on_epoch=True, sync_dist=True, batch_size=len(y))
        getattr(self, f"{split}_metrics").update(self.task.activation(scaled), y)
        return {"logits": logits.detach(), "targets": y}

    def validation_step(self, batch, batch_idx):
        step = self._eval_step(batch, "val")
        if not self.trainer.sanity_checking:
            self._val_outputs.append((step["logits"], step["targets"]))  # on the device: no copy per step
        return step

    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []

    def test_step(self, batch, batch_idx):
        return self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        if self.trainer.sanity_checking:
            return
        self.log_dict(values)
        monitor = self.hparams.monitor
        current = values.get(monitor, self.trainer.callback_metrics.get(monitor))
        if current is not None:
            # strictly better, as ModelCheckpoint decides: a tie keeps the earlier epoch
            better = torch.gt if isinstance(self.best_metric, MaxMetric) else torch.lt
            improved = not self.best_metric.update_count or bool(better(current, self.best_metric.compute()))
            self.best_metric.update(current)
            self.log(f"{monitor}_best", self.best_metric.compute(), prog_bar=True)
            if improved and self._val_outputs and torch.isfinite(torch.as_tensor(current)):
                logits, targets = (torch.cat(t).cpu() for t in zip(*self._val_outputs, strict=True))
                self.best_val_outputs = BestValidationOutputs(
                    self.current_epoch, float(current), logits, targets
                )
        self._val_outputs = []

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return self.probabilities(x)

    # ---------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["medtransfer"] = {
            "format": CHECKPOINT_FORMAT,
            "class_names": self.class_names,
            "preprocessing": self.preprocessing,
            "calibration": self.calibration,
            "operating_point": self.operating_point,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Temperature and threshold travel in the checkpoint (absent in those saved during training:
        nothing is fitted before training ends)."""
        saved = checkpoint.get("medtransfer") or {}
        self.calibration = saved.get("calibration")
        self.operating_point = saved.get("operating_point")
