"""Every option of every config group composes with the train config, and its targets instantiate."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from medtransfer.finetune.strategies import FreezingStrategy
from medtransfer.utils.compose import compose_config
from medtransfer.utils.paths import CONFIG_DIR

GROUPS = [
    "data",
    "model/head",
    "finetune",
    "optimizer",
    "scheduler",
    "trainer",
    "callbacks",
    "logger",
    "experiment",
    "debug",
]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group, option, tmp_path):
    data = [] if group in ("data", "experiment") and option != "folder" else ["data.root=x"]
    cfg = compose_config("train", tmp_path / "run", [f"{group}={option}", *data])
    assert cfg.model.backbone and cfg.paths.output_dir == str(tmp_path / "run")
    if group == "finetune":
        assert isinstance(instantiate(cfg.finetune), FreezingStrategy)
    if group in ("optimizer", "scheduler"):
        assert callable(instantiate(cfg[group]))
    if group == "callbacks":
        for callback in (cfg.callbacks or {}).values():
            if callback:
                instantiate(callback)


@pytest.mark.parametrize("name", ["eval", "predict"])
def test_entry_point_configs_compose(name, tmp_path):
    cfg = compose_config(
        name, tmp_path / "run", ["ckpt_path=x.ckpt", *(["input=y"] if name == "predict" else [])]
    )
    assert cfg.ckpt_path == "x.ckpt"


def test_outputs_dir_is_kept_empty_by_gitignore():
    ignore = Path(__file__).resolve().parents[1] / "outputs" / ".gitignore"
    assert ignore.read_text().split() == ["*", "!.gitignore"]
