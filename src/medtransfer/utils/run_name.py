"""What a run is called: in a multirun, the overrides that differ between its jobs
(`finetune=full,optimizer.lr=0.001`); a single run is named by its directory (task name and time).

The swept keys are known only to the process that starts the sweep: `SweptKeys` (a Hydra callback,
conf/hydra/default.yaml) reads them from the sweep's command line and `hydra.sweeper.params` and hands
them to the jobs in the environment (which the basic launcher, submitit's processes and DDP ranks
inherit). A job writes its name and swept keys to `run_name.json` in its run dir, so a resumed job keeps it."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

SWEPT_KEYS_ENV = "MEDTRANSFER_SWEPT_KEYS"
NAME_FILE = "run_name.json"
MAX_NAME_LENGTH = 120


def override_key(override: str) -> str:
    """`+trainer.foo=1` -> `trainer.foo`; `finetune=full` -> `finetune`."""
    return override.split("=", 1)[0].lstrip("+~")


def swept_keys(arguments: Iterable[str], sweeper_params: Mapping | None = None) -> list[str]:
    """The keys a sweep varies: those of `hydra.sweeper.params`, then command-line overrides with sweep
    syntax (`a,b`, `range(…)`, `choice(…)`, `interval(…)`, `glob(…)`), in the order given."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = [str(k) for k in (sweeper_params or {})]
    parsed = OverridesParser.create().parse_overrides([a for a in arguments if "=" in a])
    keys += [o.key_or_group for o in parsed if o.is_sweep_override()]
    return list(dict.fromkeys(keys))


def name_from_overrides(overrides: Iterable[str], keys: Iterable[str]) -> str:
    """`k=v,k=v` over `keys`, with each value as the job's override gives it."""
    values = {override_key(o): o.split("=", 1)[1] for o in overrides if "=" in o}
    return ",".join(f"{k}={values[k]}" for k in keys if k in values)


def file_safe(name: str) -> str:
    """A name usable as one path component: characters other than letters, digits and `._=,+-` become `_`;
    a long name is cut and keeps a short hash of the whole, so that two names stay two."""
    safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name).strip(".") or "run"
    if len(safe) > MAX_NAME_LENGTH:
        import hashlib

        safe = f"{safe[: MAX_NAME_LENGTH - 9]}~{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return safe


def job_naming(run_dir: str | Path) -> tuple[str | None, list[str]]:
    """(name, swept keys) of the run in `run_dir`: from its name file (a resumed job), else, in a multirun
    job, its swept overrides (then written to the name file); (None, []) for a single run, which its
    directory names (task name and time)."""
    name_file = Path(run_dir) / NAME_FILE
    if name_file.is_file():
        saved = json.loads(name_file.read_text())
        return saved["name"], list(saved["swept"])
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None, []
    hydra_cfg = HydraConfig.get()
    env = os.environ.get(SWEPT_KEYS_ENV)
    keys = env.split("\n") if env else swept_keys([], hydra_cfg.sweeper.get("params"))
    keys = [k for k in keys if any(override_key(o) == k for o in hydra_cfg.overrides.task)]
    name = name_from_overrides(hydra_cfg.overrides.task, keys) or f"job{hydra_cfg.job.num}"
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    name_file.write_text(json.dumps({"name": name, "swept": keys}) + "\n")
    return name, keys


class SweptKeys(Callback):
    """At the start of a multirun: the swept keys into the environment, for the jobs to name themselves."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        keys = swept_keys(config.hydra.overrides.task, config.hydra.sweeper.get("params"))
        os.environ[SWEPT_KEYS_ENV] = "\n".join(keys)
