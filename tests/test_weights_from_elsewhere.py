"""Weights and checkpoints from elsewhere: state dicts saved by DataParallel and self-supervised training
(MoCo, encoders, wrappers) load with their prefix stripped and reported; weights that do not fit, and
foreign checkpoints given as ckpt_path, get the project's ConfigError naming the keys and the fix."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision

from medtransfer.models.backbone import build_backbone
from medtransfer.models.checkpoint import load_classifier
from medtransfer.utils.errors import ConfigError


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


def moco(sd):
    """MoCo v1/v2 layout (facebookresearch/moco main_moco.py): query and key encoders under a
    DataParallel prefix, a queue, nested under 'state_dict' next to epoch and arch."""
    state = {f"module.encoder_q.{k}": v for k, v in sd.items()}
    state.update({f"module.encoder_k.{k}": v.clone() for k, v in sd.items()})
    state["module.queue"] = torch.randn(128, 64)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return {"epoch": 200, "arch": "resnet18", "state_dict": state}


LAYOUTS = {
    "moco": (moco, "module.encoder_q."),
    "dataparallel": (lambda sd: {f"module.{k}": v for k, v in sd.items()}, "module."),
    "encoder_q": (lambda sd: {f"encoder_q.{k}": v for k, v in sd.items()}, "encoder_q."),
    "encoder": (lambda sd: {"state_dict": {f"encoder.{k}": v for k, v in sd.items()}}, "encoder."),
    "backbone": (lambda sd: {f"backbone.{k}": v for k, v in sd.items()}, "backbone."),
    "model_key": (lambda sd: {"model": {f"model.{k}": v for k, v in sd.items()}}, "model."),
    "plain": (lambda sd: dict(sd), None),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_known_layouts_load_and_say_what_was_stripped(layout, source, tmp_path, caplog):
    make, prefix = LAYOUTS[layout]
    path = tmp_path / "weights.pth.tar"
    torch.save(make(source), path)
    with caplog.at_level(logging.INFO, logger="medtransfer.models.backbone"):
        net, _ = build_backbone("resnet18", str(path), in_channels=1)
    torch.testing.assert_close(net.layer4[1].conv2.weight, source["layer4.1.conv2.weight"])
    torch.testing.assert_close(net.conv1.weight, source["conv1.weight"].sum(1, keepdim=True))
    n = len([k for k in source if not k.startswith("fc.")])
    expected = f"prefix {prefix!r} stripped" if prefix else "no prefix"
    assert f"loaded {n} tensors into resnet18 from {expected}" in caplog.text
    if layout == "moco":
        assert "tensors outside the prefix ignored" in caplog.text  # the key encoder and the queue


def test_weights_of_another_architecture_name_keys_and_fix(tmp_path):
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ConfigError) as err:
        build_backbone("resnet18", str(tmp_path / "r34.pth"))
    message = str(err.value)
    assert "does not fit resnet18" in message and "unexpected layer1.2." in message
    assert "model.backbone" in message and "First keys in the file: conv1.weight" in message


def test_a_shape_mismatch_is_reported_before_loading(source, tmp_path):
    wide = dict(source)
    wide["layer1.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)
    torch.save(wide, tmp_path / "w.pth")
    with pytest.raises(ConfigError, match=r"shapes differ: layer1\.0\.conv1\.weight \(32, 64, 3, 3\)"):
        build_backbone("resnet18", str(tmp_path / "w.pth"))


def test_unrecognised_keys_name_the_first_ones_found(tmp_path):
    torch.save(
        {"net.features.0.weight": torch.zeros(3), "net.features.0.bias": torch.zeros(3)}, tmp_path / "w.pt"
    )
    with pytest.raises(ConfigError) as err:
        build_backbone("resnet18", str(tmp_path / "w.pt"))
    assert "no resnet18 weights recognised (first keys: net.features.0.weight" in str(err.value)
    assert "model.weights=null" in str(err.value)


def test_a_file_without_tensors_or_a_pickled_module_is_a_config_error(tmp_path):
    torch.save({"epoch": 3, "arch": "resnet18"}, tmp_path / "meta.pth")
    with pytest.raises(ConfigError, match="no tensors found"):
        build_backbone("resnet18", str(tmp_path / "meta.pth"))
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")  # a whole module: refused by weights_only
    with pytest.raises(ConfigError, match=r"torch.save\(model.state_dict\(\), PATH\)"):
        build_backbone("resnet18", str(tmp_path / "module.pth"))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (lambda sd: dict(sd), "not a Lightning checkpoint (no state_dict). It looks like bare weights"),
        (
            lambda sd: {"state_dict": sd, "hyper_parameters": {"lr": 0.1}, "epoch": 3},
            "not of a medtransfer classifier (no backbone, num_classes, in_channels in its hyper_parameters)",
        ),
        (lambda sd: [1, 2], "not a checkpoint (it holds a list)"),
    ],
)
def test_a_foreign_checkpoint_gets_one_sentence(content, expected, source, tmp_path):
    path = tmp_path / "epoch=3-step=120.ckpt"
    torch.save(content(source), path)
    with pytest.raises(ConfigError) as err:
        load_classifier(path)
    assert expected in str(err.value) and "medtransfer-train run" in str(err.value)


def test_a_file_that_is_not_torch_at_all(tmp_path):
    (tmp_path / "best.ckpt").write_bytes(b"\x89PNG\r\n not a checkpoint")
    with pytest.raises(ConfigError, match="not a torch checkpoint"):
        load_classifier(tmp_path / "best.ckpt")
