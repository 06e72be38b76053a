"""Training length that follows the data set: `train_length.min_steps` raises `trainer.max_epochs` until
epochs × optimizer steps per epoch reaches it, so one preset trains a 500-image set long enough and
leaves a 50,000-image set at its epochs. Pure arithmetic; the command prints what it changed."""

from __future__ import annotations

import math

from medtransfer.utils.errors import ConfigError


def optimizer_steps_per_epoch(
    train_images: int,
    batch_size: int,
    accumulate_grad_batches: int = 1,
    limit_train_batches: int | float | None = None,
) -> int:
    """Optimizer steps in one epoch: batches (the global batch; the last one may be short), cut by
    `limit_train_batches` (a count, or a fraction of the batches), over the accumulation. Lightning
    steps the optimizer on the last batch of an epoch even when the accumulation is incomplete."""
    batches = math.ceil(train_images / batch_size)
    if isinstance(limit_train_batches, float) and limit_train_batches <= 1.0:
        batches = int(batches * limit_train_batches)
    elif limit_train_batches is not None:
        batches = min(batches, int(limit_train_batches))
    return math.ceil(batches / max(1, accumulate_grad_batches))


def epochs_for_min_steps(max_epochs: int | None, steps_per_epoch: int, min_steps: int | None) -> int | None:
    """`max_epochs`, raised to the fewest epochs whose steps reach `min_steps` (None: unchanged; so is an
    unlimited max_epochs, None or -1)."""
    if min_steps is None or max_epochs is None or max_epochs < 0:
        return max_epochs
    if not isinstance(min_steps, int) or isinstance(min_steps, bool) or min_steps < 1:
        raise ConfigError(
            f"train_length.min_steps={min_steps!r}: give a positive whole number of optimizer steps, or null."
        )
    if steps_per_epoch < 1:
        raise ConfigError(
            "train_length.min_steps: an epoch has no optimizer step (no training images, or "
            "trainer.limit_train_batches=0); check the data and trainer.limit_train_batches."
        )
    return max(max_epochs, math.ceil(min_steps / steps_per_epoch))
