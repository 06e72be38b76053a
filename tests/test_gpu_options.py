"""GPU speed options: trainer=gpu (bf16-mixed, cuDNN benchmark, model.channels_last), channels-last weights
and batches, and model.compile. Run on the CPU with 16 px images: the options must keep the model's
outputs, its state dict keys and its checkpoints unchanged."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader, TensorDataset

from conftest import compose_config
from medtransfer.models.checkpoint import load_classifier
from medtransfer.models.classifier import Classifier
from medtransfer.utils.errors import ConfigError

CHANNELS_LAST = torch.channels_last


def tiny_classifier(**kwargs) -> Classifier:
    torch.manual_seed(0)
    return Classifier(
        backbone="resnet18", weights=None, num_classes=2, in_channels=3, image_size=16, **kwargs
    )


def fit_two_steps(model: Classifier) -> L.Trainer:
    """Two real training steps through Lightning on the CPU (batch transfer hooks included)."""
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(8, 3, 16, 16, generator=generator), torch.tensor([0, 1] * 4))
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train_dataloaders=DataLoader(data, batch_size=4))
    return trainer


def test_trainer_gpu_sets_speed_options_and_keeps_overrides(tmp_path):
    def compose(*overrides: str):
        return compose_config("train", tmp_path / "run", list(overrides))

    default = compose("data.root=x")
    assert default.trainer.precision == "32-true" and default.trainer.benchmark is None
    assert default.model.channels_last is False and default.model.compile is False

    gpu = compose("data.root=x", "trainer=gpu")
    assert (gpu.trainer.accelerator, gpu.trainer.devices, gpu.trainer.precision) == ("gpu", 1, "bf16-mixed")
    assert gpu.trainer.benchmark is True and gpu.model.channels_last is True
    # the rest of trainer/default is still there, and nothing but channels_last changed in the model
    assert gpu.trainer.max_epochs == default.trainer.max_epochs and gpu.trainer._target_.endswith("Trainer")
    assert {**gpu.model, "channels_last": False} == {**default.model}

    # command-line values, presets across groups and sweep presets compose on top of it
    multi = compose("data.root=x", "trainer=gpu", "trainer.devices=2", "trainer.max_epochs=3")
    assert (multi.trainer.devices, multi.trainer.max_epochs, multi.model.channels_last) == (2, 3, True)
    assert compose("data.root=x", "trainer=gpu", "model.channels_last=false").model.channels_last is False
    preset = compose("trainer=gpu", "experiment=pneumonia", "hparams_search=grid")
    assert preset.data.name == "pneumoniamnist" and preset.model.class_weights == "auto"
    assert preset.model.channels_last is True and preset.trainer.precision == "bf16-mixed"
    job = compose("data.root=x", "trainer=gpu", "hparams_search=grid", "trainer.precision=32-true")
    assert job.trainer.precision == "32-true" and job.trainer.benchmark is True

    # every trainer key is a Lightning Trainer argument; benchmark=true turns cuDNN autotuning on
    was = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        trainer = instantiate(gpu.trainer, accelerator="cpu", logger=False)
        assert isinstance(trainer, L.Trainer) and torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = was


def test_channels_last_trains_on_channels_last_batches_and_loads_without_it(tmp_path):
    model, plain = tiny_classifier(channels_last=True), tiny_classifier()
    assert model.backbone.conv1.weight.is_contiguous(memory_format=CHANNELS_LAST)
    assert not plain.backbone.conv1.weight.is_contiguous(memory_format=CHANNELS_LAST)
    assert model.state_dict().keys() == plain.state_dict().keys()

    x = torch.rand(4, 3, 16, 16)
    seen = []
    model.backbone.register_forward_pre_hook(
        lambda _module, args: seen.append(args[0].is_contiguous(memory_format=CHANNELS_LAST))
    )
    trainer = fit_two_steps(model)
    assert seen == [True, True]  # the backbone got channels-last batches in training
    plain.backbone.register_forward_pre_hook(
        lambda _module, args: seen.append(args[0].is_contiguous(memory_format=CHANNELS_LAST))
    )
    fit_two_steps(plain)
    assert seen == [True, True, False, False]
    trainer.save_checkpoint(tmp_path / "channels_last.ckpt")

    loaded = Classifier.load_from_checkpoint(
        tmp_path / "channels_last.ckpt", weights_only=True, channels_last=False
    ).eval()
    assert not loaded.backbone.conv1.weight.is_contiguous(memory_format=CHANNELS_LAST)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=1e-4, atol=1e-5)


def test_compile_runs_the_backbone_through_torch_compile_with_the_same_outputs():
    torch._dynamo.reset()
    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    compiled = tiny_classifier(compile={"backend": recording_backend}).eval()
    plain = tiny_classifier().eval()
    plain.load_state_dict(compiled.state_dict())
    assert compiled.backbone._compiled_call_impl is not None and plain.backbone._compiled_call_impl is None
    assert compiled.state_dict().keys() == plain.state_dict().keys()
    assert not any("_orig_mod" in key for key in compiled.state_dict())

    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), plain(x), rtol=1e-4, atol=1e-5)
    # dynamo traced the backbone's convolutions into a graph and handed it to the backend
    assert graphs and any("conv2d" in str(node.target) for g in graphs for node in g.graph.nodes)


def test_compiled_model_trains_and_its_checkpoint_loads_uncompiled(tmp_path):
    torch._dynamo.reset()
    model = tiny_classifier(compile={"backend": "eager"}, channels_last=True)
    keys = tiny_classifier().state_dict().keys()
    trainer = fit_two_steps(model)
    assert model.backbone._compiled_call_impl is not None and model.state_dict().keys() == keys
    trainer.save_checkpoint(tmp_path / "compiled.ckpt")

    loaded = load_classifier(tmp_path / "compiled.ckpt")  # evaluation and prediction run eagerly
    assert loaded.hparams.compile is False and loaded.backbone._compiled_call_impl is None
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=1e-4, atol=1e-5)


def test_compile_value_that_is_neither_bool_nor_mapping_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.compile='max-autotune'.*\{mode:max-autotune\}"):
        tiny_classifier(compile="max-autotune")
