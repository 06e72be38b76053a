"""The backbone, its stem adaptation, the head and the offline weights message."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from medtransfer.models.backbone import RESNETS, adapt_input_conv, build_backbone
from medtransfer.models.classifier import Classifier
from medtransfer.utils.errors import WeightsUnavailableError


def test_grayscale_stem_equals_rgb_model_on_copied_image():
    torch.manual_seed(0)
    rgb, _ = build_backbone("resnet18", None, in_channels=3)
    gray, _ = build_backbone("resnet18", None, in_channels=1)
    gray.load_state_dict({**rgb.state_dict(), "conv1.weight": adapt_input_conv(rgb.conv1.weight, 1)})
    rgb.eval(), gray.eval()
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(gray(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)


def test_head_is_sized_by_the_data_and_replaceable():
    model = Classifier(num_classes=5, in_channels=1, head={"name": "mlp", "hidden": 32})
    assert model.head[-1].out_features == 5 and model.head[0].in_features == 512
    assert model.backbone.conv1.in_channels == 1
    assert model(torch.rand(3, 1, 32, 32)).shape == (3, 5)


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d", "wide_resnet50_2"])
def test_other_resnets_build_with_their_feature_width(name):
    _net, width = build_backbone(name, None, in_channels=3)
    assert width == 2048 and name in RESNETS


def test_offline_weights_give_an_actionable_message(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", no_network)
    with pytest.raises(WeightsUnavailableError) as err:
        build_backbone("resnet18", "DEFAULT")
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message  # the file to fetch
    assert str(tmp_path / "hub" / "checkpoints") in message  # where to put it
    assert "model.weights=null" in message  # the override to use instead


def test_local_state_dict_weights_load(tmp_path):
    source, _ = build_backbone("resnet18", None)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    loaded, _ = build_backbone("resnet18", str(tmp_path / "w.pt"), in_channels=1)
    torch.testing.assert_close(loaded.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    torch.testing.assert_close(loaded.conv1.weight, source.conv1.weight.sum(1, keepdim=True))
