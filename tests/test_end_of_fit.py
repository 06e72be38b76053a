"""The end-of-fit callbacks (threshold and temperature fit, Grad-CAM grid, out-of-fold predictions) work on
the validation predictions the best epoch already made, and fall back to a pass of best.ckpt over the
validation split only when those cannot be known to be the checkpoint's."""

from __future__ import annotations

import pytest
import torch

from medtransfer.models.checkpoint import best_validation_outputs
from medtransfer.models.classifier import Classifier
from medtransfer.train import build_data, build_model, build_trainer


def fitted(cfg):
    datamodule = build_data(cfg)
    model = build_model(cfg, datamodule)
    trainer = build_trainer(cfg, model)
    trainer.fit(model, datamodule=datamodule)
    return trainer, model


@pytest.fixture
def run(train_config, monkeypatch):
    """A 3-epoch tiny run with every default end-of-fit callback, during which no model may make a pass
    over a loader outside Lightning's own loops."""

    def refuse(*args, **kwargs):
        raise AssertionError("an end-of-fit callback ran a validation pass of its own")

    monkeypatch.setattr(Classifier, "collect_logits", refuse)
    trainer, model = fitted(
        train_config("trainer.max_epochs=3", "callbacks.fit_on_validation.calibrate=true")
    )
    monkeypatch.undo()
    return trainer, model


def test_end_of_fit_callbacks_reuse_the_best_epochs_validation_predictions(run, tmp_path):
    """They ran without a pass of their own (the fixture refuses one), and what they used is what best.ckpt
    computes on the validation split."""
    trainer, model = run
    stored = model.best_val_outputs
    callback = trainer.checkpoint_callback
    assert stored.score == float(callback.best_model_score)
    saved = torch.load(callback.best_model_path, weights_only=True, map_location="cpu")
    assert saved["epoch"] == stored.epoch
    assert len(stored.targets) == len(trainer.datamodule.dataset("val"))
    # everything the callbacks were to write is there
    assert (tmp_path / "run" / "explanations.png").is_file()
    assert saved["medtransfer"]["operating_point"]["threshold"] == model.operating_point["threshold"]
    assert saved["medtransfer"]["calibration"]["temperature"] == model.calibration["temperature"]

    logits, targets = best_validation_outputs(trainer, model)
    assert logits is stored.logits and targets is stored.targets
    # the same numbers a pass of best.ckpt over the validation split gives
    model.best_val_outputs = None
    again, again_targets = best_validation_outputs(trainer, model)
    assert again is not stored.logits
    torch.testing.assert_close(again, stored.logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(again_targets, stored.targets)

    # predictions stored for another value than the checkpoint's are not used
    model.best_val_outputs = stored._replace(score=stored.score - 0.5, logits=stored.logits + 100)
    logits, _ = best_validation_outputs(trainer, model)
    torch.testing.assert_close(logits, stored.logits, rtol=1e-5, atol=1e-5)
