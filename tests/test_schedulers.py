"""Every scheduler config keeps each layer group's lr ratio to the head at every step, the learning rates
reaching the optimizer by one route: base lr × the group's scale (finetune/param_groups.py)."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from medtransfer.finetune.param_groups import apply_lr_scales, param_groups
from medtransfer.models.anatomy import LAYER_GROUPS
from medtransfer.models.classifier import Classifier
from medtransfer.utils.compose import compose_config

SCHEDULERS = ["warmup_cosine", "constant", "one_cycle", "multistep", "reduce_on_plateau"]
STEPS = 40


def built_optimizer(tmp_path, scheduler: str):
    cfg = compose_config(
        "train",
        tmp_path / "run",
        [f"scheduler={scheduler}", "finetune.layer_decay=0.6", "optimizer.lr=0.004"],
    )
    model = Classifier(finetune=instantiate(cfg.finetune), head={"name": "linear"})
    optimizer = apply_lr_scales(
        instantiate(cfg.optimizer)(param_groups(model.groups, model.strategy.lr_scales()))
    )
    return optimizer, instantiate(cfg.scheduler)(optimizer, STEPS)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_group_keeps_its_lr_ratio_to_the_head_at_every_step(tmp_path, scheduler):
    optimizer, config = built_optimizer(tmp_path, scheduler)
    depth = {g: 5 - i for i, g in enumerate(LAYER_GROUPS)}  # head 0 … stem 5
    expected = {g["name"]: 0.6 ** depth[g["name"].split("/")[0]] for g in optimizer.param_groups}
    head_lrs = []
    for step in range(STEPS):
        head = next(g["lr"] for g in optimizer.param_groups if g["name"] == "head")
        head_lrs.append(head)
        for g in optimizer.param_groups:
            assert g["lr"] / head == pytest.approx(expected[g["name"]], rel=1e-9), (
                scheduler,
                step,
                g["name"],
            )
        optimizer.step()
        if config["interval"] == "epoch":  # reduce-on-plateau: a metric that never improves
            config["scheduler"].step(0.5)
        else:
            config["scheduler"].step()
    assert config["name"] == "lr"  # LearningRateMonitor logs lr/<param group>
    if scheduler == "constant":
        assert head_lrs == [pytest.approx(0.004)] * STEPS
    else:  # the schedule really moved the learning rates
        assert min(head_lrs) < 0.5 * max(head_lrs), head_lrs


def test_reduce_on_plateau_watches_the_optimized_metric(tmp_path):
    _, config = built_optimizer(tmp_path, "reduce_on_plateau")
    assert config["monitor"] == "val/auroc" and config["scheduler"].mode == "max"


def test_one_cycle_peaks_at_each_groups_own_lr(tmp_path):
    optimizer, _ = built_optimizer(tmp_path, "one_cycle")
    peaks = {g["name"]: g["max_lr"] for g in optimizer.param_groups}
    assert peaks["head"] == pytest.approx(0.004) and peaks["stem"] == pytest.approx(0.004 * 0.6**5)
