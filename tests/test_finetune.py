"""Transfer-learning controls: layer-group learning rates, weight decay, freezing strategies, BatchNorm
policy, gradual unfreezing in one process, after a resume and under DDP."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import run_train_cli
from medtransfer.finetune.param_groups import apply_lr_scales, param_groups
from medtransfer.finetune.strategies import FastAI, Full, Gradual, LinearProbe, Partial
from medtransfer.models.anatomy import LAYER_GROUPS
from medtransfer.models.classifier import Classifier
from medtransfer.train import train
from probe import read_probe

TESTS = Path(__file__).parent
BACKBONE = LAYER_GROUPS[:-1]


def probe_override(out_dir: Path) -> list[str]:
    return ["+callbacks.probe._target_=probe.GroupProbe", f"+callbacks.probe.out_dir={out_dir}"]


# --------------------------------------------------------------- learning rates and weight decay
def test_param_groups_lr_multipliers_and_no_decay_on_bias_and_norm():
    model = Classifier(finetune=Full(lr_mult={"stem": 0.01, "layer4": 0.5}))
    built = torch.optim.AdamW(
        param_groups(model.groups, model.strategy.lr_scales()), lr=1e-3, weight_decay=0.05
    )
    groups = {g["name"]: g for g in apply_lr_scales(built).param_groups}
    assert groups["stem"]["lr"] == pytest.approx(1e-5) and groups["layer4"]["lr"] == pytest.approx(5e-4)
    assert groups["head"]["lr"] == pytest.approx(1e-3) and groups["layer1"]["lr"] == pytest.approx(1e-3)
    no_decay = {id(p) for g in groups.values() if g["weight_decay"] == 0.0 for p in g["params"]}
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if isinstance(module, nn.BatchNorm2d) or pname == "bias":
                assert id(p) in no_decay, f"{name}.{pname} must not be decayed"
            else:
                assert id(p) not in no_decay, f"{name}.{pname} must be decayed"
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))


def test_geometric_spreads():
    decay = Gradual(layer_decay=0.5).bind(LAYER_GROUPS).lr_scales()
    assert decay == {
        "head": 1.0,
        "layer4": 0.5,
        "layer3": 0.25,
        "layer2": 0.125,
        "layer1": 0.0625,
        "stem": 0.03125,
    }
    spread = FastAI().bind(LAYER_GROUPS).lr_scales()  # fastai slice(lr/100, lr)
    assert spread["head"] == pytest.approx(1.0) and spread["stem"] == pytest.approx(0.01)
    ratios = [spread[b] / spread[a] for a, b in itertools.pairwise(LAYER_GROUPS)]
    assert all(r == pytest.approx(ratios[0]) for r in ratios)


# ------------------------------------------------------------------------ strategies, trained
def test_lr_of_each_group_at_first_step_equals_config(train_config, tmp_path):
    cfg = train_config(
        "finetune=full",
        "finetune.layer_decay=0.5",
        "scheduler=constant",
        "optimizer.lr=0.004",
        "trainer.max_epochs=1",
        *probe_override(tmp_path),
    )
    train(cfg)
    lr = read_probe(tmp_path)[0]["lr"]
    for depth, group in enumerate(reversed(LAYER_GROUPS)):
        assert lr[group] == pytest.approx(0.004 * 0.5**depth)
        assert lr[f"{group}/no_decay"] == pytest.approx(0.004 * 0.5**depth)


def test_linear_probe_freezes_backbone_bit_for_bit_and_runs_no_backward_through_it(train_config, tmp_path):
    cfg = train_config("finetune=linear_probe", *probe_override(tmp_path))
    train(cfg)
    for record in read_probe(tmp_path):
        assert record["trainable"] == ["head"]
        assert record["params_changed"] == {g: g == "head" for g in LAYER_GROUPS}
        assert not any(record["buffers_changed"][g] for g in BACKBONE)  # BatchNorm running stats kept
    model = Classifier(finetune=LinearProbe()).train()
    assert not model.features(torch.rand(2, 3, 32, 32)).requires_grad  # no graph through the backbone
    assert all(not m.training for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize("bn", ["frozen", "train"])
def test_partial_freezes_up_to_a_stage_with_bn_policy(train_config, tmp_path, bn):
    cfg = train_config(
        "finetune=partial", "finetune.frozen_until=layer2", f"finetune.bn={bn}", *probe_override(tmp_path)
    )
    model_groups = ("layer3", "layer4", "head")
    train(cfg)
    record = read_probe(tmp_path)[-1]
    assert record["trainable"] == sorted(model_groups)
    for g in LAYER_GROUPS:
        if g in model_groups or bn == "train":  # bn=train: BatchNorm affine params of frozen groups train
            assert record["params_changed"][g], g
        else:
            assert not record["params_changed"][g], g
        # running statistics move where BatchNorm runs in train mode (the linear head has none)
        assert record["buffers_changed"][g] == ((g in model_groups or bn == "train") and g != "head"), g


def test_partial_bn_train_leaves_frozen_convolutions_unchanged():
    model = Classifier(finetune=Partial(frozen_until="layer1", bn="train"))
    assert not model.backbone.layer1[0].conv1.weight.requires_grad
    assert model.backbone.layer1[0].bn1.weight.requires_grad and model.backbone.layer1[0].bn1.training


GRADUAL_SCHEDULE = {
    0: {"head"},
    1: {"head", "layer4"},
    2: {"head", "layer4", "layer3"},
    3: {"head", "layer4", "layer3", "layer2"},
}


def assert_gradual(records: list[dict], epochs) -> None:
    seen = {r["epoch"]: r for r in records}
    for epoch in epochs:
        r = seen[epoch]
        assert set(r["trainable"]) == GRADUAL_SCHEDULE[epoch], epoch
        assert {g for g, changed in r["params_changed"].items() if changed} == GRADUAL_SCHEDULE[epoch], epoch
        assert {g for g, changed in r["buffers_changed"].items() if changed} == GRADUAL_SCHEDULE[epoch] - {
            "head"
        }, epoch


def test_gradual_trains_exactly_the_scheduled_groups(train_config, tmp_path):
    assert Gradual(at_epochs=[2, 5]).bind(LAYER_GROUPS).trainable(4) == {"head", "layer4"}
    assert Partial(frozen_until="stem").bind(LAYER_GROUPS).trainable(0) == set(LAYER_GROUPS) - {"stem"}
    cfg = train_config("finetune=gradual", "trainer.max_epochs=4", *probe_override(tmp_path))
    train(cfg)
    assert_gradual(read_probe(tmp_path), range(4))


def test_gradual_resumed_mid_schedule_keeps_the_schedule(train_config, tmp_path):
    first = train_config(
        "finetune=gradual", "trainer.max_epochs=2", "test=false", *probe_override(tmp_path / "a")
    )
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    resumed = train_config(
        "finetune=gradual", "trainer.max_epochs=4", f"ckpt_path={last}", *probe_override(tmp_path / "b")
    )
    train(resumed)
    records = read_probe(tmp_path / "b")
    assert [r["epoch"] for r in records] == [2, 3]
    assert_gradual(records, [2, 3])


def test_fastai_head_then_everything_with_spread_lrs(train_config, tmp_path):
    cfg = train_config(
        "finetune=fastai", "scheduler=constant", "trainer.max_epochs=2", *probe_override(tmp_path)
    )
    assert cfg.optimizer.lr == pytest.approx(2e-3)
    train(cfg)
    first, second = read_probe(tmp_path)
    assert {g for g, c in first["params_changed"].items() if c} == {"head"}
    assert all(second["params_changed"].values())
    assert second["lr"]["stem"] == pytest.approx(2e-5) and second["lr"]["head"] == pytest.approx(2e-3)


@pytest.mark.slow
def test_gradual_under_ddp_with_two_cpu_processes(tmp_path, npz_file):
    result = run_train_cli(
        tmp_path,
        npz_file,
        "finetune=gradual",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.max_epochs=3",
        *probe_override(tmp_path / "probe"),
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0, rank1 = read_probe(tmp_path / "probe", 0), read_probe(tmp_path / "probe", 1)
    assert_gradual(rank0, range(3))
    assert_gradual(rank1, range(3))
    for a, b in zip(rank0, rank1, strict=True):  # gradients were synchronised, also after each unfreeze
        for g in LAYER_GROUPS:
            assert math.isclose(a["checksum"][g], b["checksum"][g], rel_tol=1e-6, abs_tol=1e-6), (
                a["epoch"],
                g,
            )
    runs = list((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "metrics.json").is_file()


def test_transfer_from_an_earlier_medical_run_drops_its_head(train_config):
    """A 1-channel, 2-class run's backbone fine-tunes on 3-channel, 3-class data."""
    cfg = train_config("trainer.max_epochs=1", "test=false")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt"
    source = torch.load(ckpt, weights_only=True)["state_dict"]
    model = Classifier(weights=str(ckpt), num_classes=3, in_channels=3)
    torch.testing.assert_close(
        model.backbone.layer3[1].conv2.weight, source["backbone.layer3.1.conv2.weight"]
    )
    torch.testing.assert_close(model.backbone.bn1.running_var, source["backbone.bn1.running_var"])
    # the 1-channel stem spread over 3 channels: the same response to a gray image
    torch.testing.assert_close(
        model.backbone.conv1.weight.sum(1, keepdim=True), source["backbone.conv1.weight"]
    )
    assert model.head[-1].out_features == 3


def test_a_frozen_start_on_random_weights_is_warned_about(train_config):
    from medtransfer.train import build_data, build_model
    from medtransfer.utils.console import console

    for finetune, warned in (("linear_probe", True), ("full", False)):
        cfg = train_config(f"finetune={finetune}")
        with console.capture() as captured:
            build_model(cfg, build_data(cfg))
        text = " ".join(captured.get().replace("│", " ").split())
        assert ("keep their random initial weights" in text) is warned, text
        if warned:
            assert "stem, layer1, layer2, layer3, layer4 frozen" in text and "model.weights=DEFAULT" in text
