"""The real Hydra config composed outside a Hydra run (tests, benchmarks, notebooks)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from medtransfer.utils.paths import CONFIG_DIR


def compose_config(config_name: str, output_dir: Path, overrides: list[str]) -> DictConfig:
    """The config `config_name` with `overrides`, its run dir set to `output_dir` and its caches beside it
    (no Hydra runtime needed, so `${hydra:...}` interpolations are resolved here)."""
    output_dir = Path(output_dir)
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir.parent)
        cfg.paths.data_dir = str(output_dir.parent / "data")
        del cfg.hydra
    return cfg
