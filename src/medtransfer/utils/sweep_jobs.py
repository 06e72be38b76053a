"""Re-running a sweep into the same sweep dir (`hydra.sweep.dir=...`), and the jobs a sweep consists of.

Each job looks at what an earlier run left in its run dir (status.json, checkpoints/last.ckpt):

| earlier state | what the job does now |
|---|---|
| completed (same overrides) | nothing: returns the stored `<optimized_metric>_best` from metrics.json |
| completed (other overrides) | stops: ConfigError (the sweep dir belongs to another sweep) |
| interrupted, or no status.json but a last.ckpt (killed) | continues from checkpoints/last.ckpt |
| failed | nothing (returns NaN and says so), unless `rerun_failed=true`: trained again from scratch |
| nothing | trains |

Only jobs of a multirun do this; a single run trains as told (`resume=<run dir>` continues one).

`expected_jobs` lists a sweep's jobs from its multirun.yaml, also those that never started: every job of
Hydra's basic sweeper (the grid, in launch order), and the job numbers 0…n_trials-1 of a sampler such as
Optuna (whose overrides are only known once a trial is drawn)."""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from medtransfer.utils.checkpoint_io import checkpoint_damage
from medtransfer.utils.console import console
from medtransfer.utils.errors import ConfigError

RESUME_ENV = "MEDTRANSFER_RESUME_CKPT"
# overrides that do not change what a job computes: ignored when an earlier run is compared with this one
NEUTRAL_KEYS = ("rerun_failed", "print_config", "ckpt_path")


def task_overrides() -> list[str] | None:
    """This job's command-line overrides (Hydra's overrides.task), or None outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return list(HydraConfig.get().overrides.task)


def _comparable(overrides: list[str]) -> list[str]:
    return sorted(o for o in overrides if o.lstrip("+~").split("=", 1)[0] not in NEUTRAL_KEYS)


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def earlier_outcome(cfg: DictConfig, overrides: list[str] | None) -> tuple[str, float | str | None]:
    """What a sweep job does given its run dir: ("skip", stored metric), ("resume", last.ckpt path) or
    ("train", None). Raises ConfigError when the run dir holds a completed job with other overrides."""
    run_dir = Path(cfg.paths.output_dir)
    status = _read_json(run_dir / "status.json")
    state = status.get("status")
    last = run_dir / "checkpoints" / "last.ckpt"
    job = run_dir.name
    if state == "completed":
        stored = status.get("overrides")
        if stored is not None and overrides is not None and _comparable(stored) != _comparable(overrides):
            raise ConfigError(
                f"{run_dir} holds a completed job with other overrides ({' '.join(_comparable(stored))}) "
                f"than this one ({' '.join(_comparable(overrides))}): this sweep dir belongs to another "
                f"sweep. Give this sweep a new hydra.sweep.dir."
            )
        metrics = _read_json(run_dir / "metrics.json")
        value = metrics.get(f"{cfg.optimized_metric}_best", math.nan)
        console.print(
            f"[green]job {job}: completed earlier, not trained again "
            f"({cfg.optimized_metric}_best={value}).[/green]"
        )
        return "skip", float(value)
    if state == "failed" and not cfg.get("rerun_failed", False):
        console.print(
            f"[yellow]job {job}: failed earlier ({status.get('error', '?')}); not run again. Add "
            f"rerun_failed=true to the command to train the failed jobs again.[/yellow]"
        )
        return "skip", math.nan
    if state == "failed":
        console.print(f"[yellow]job {job}: failed earlier; trained again from scratch.[/yellow]")
        return "train", None
    if last.is_file() and not cfg.get("ckpt_path"):
        if checkpoint_damage(last) is None:
            console.print(
                f"[yellow]job {job}: {state or 'stopped'} earlier; continuing from {last}.[/yellow]"
            )
            return "resume", str(last)
        console.print(f"[yellow]job {job}: its {last} is damaged; trained again from scratch.[/yellow]")
    return "train", None


@contextlib.contextmanager
def resumable_sweep_job(cfg: DictConfig) -> Iterator[float | None]:
    """For a job of a multirun: yields the metric to return without training when the job is done (or
    failed and not to be re-run), else None — after pointing `cfg.ckpt_path` at the job's last.ckpt when
    it was interrupted. The resume path is exported (MEDTRANSFER_RESUME_CKPT) for the job's DDP ranks > 0,
    which run the job's command in run mode and pick it up here. Outside a multirun: yields None."""
    if not _is_multirun():
        inherited = os.environ.get(RESUME_ENV)
        run_dir = Path(cfg.paths.output_dir).resolve()
        if inherited and not cfg.get("ckpt_path") and Path(inherited).resolve().parent.parent == run_dir:
            cfg.ckpt_path = inherited  # a DDP rank of a resumed sweep job
        yield None
        return
    action, value = earlier_outcome(cfg, task_overrides())
    if action == "skip":
        yield value
        return
    if action != "resume":
        yield None
        return
    cfg.ckpt_path = value
    os.environ[RESUME_ENV] = str(value)
    try:
        yield None
    finally:
        os.environ.pop(RESUME_ENV, None)


def expected_jobs(sweep_dir: str | Path) -> list[tuple[str, list[str] | None]] | None:
    """(job dir name, overrides or None when not known in advance) for every job the sweep in `sweep_dir`
    consists of, from its multirun.yaml; None when that cannot be told (no multirun.yaml, or job dirs not
    named by job number)."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        config = OmegaConf.load(path)
        hydra_cfg = config.hydra
        subdir = OmegaConf.to_container(hydra_cfg.sweep, resolve=False).get("subdir")
        if str(subdir) != "${hydra.job.num}":
            return None
        sweeper = hydra_cfg.sweeper
        target = str(sweeper.get("_target_", ""))
        if target.endswith("BasicSweeper"):
            from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
            from hydra.core.override_parser.overrides_parser import OverridesParser

            params = sweeper.get("params")
            params = OmegaConf.to_container(params, resolve=False) if params else {}
            arguments = [f"{k}={v}" for k, v in params.items()]
            arguments += list(hydra_cfg.overrides.task)
            parsed = OverridesParser.create().parse_overrides(arguments)
            batches = BasicSweeper.split_arguments(parsed, None)
            jobs = [job for batch in batches for job in batch]
            return [(str(i), list(job)) for i, job in enumerate(jobs)]
        if "n_trials" in sweeper:
            return [(str(i), None) for i in range(int(sweeper.n_trials))]
    except Exception:  # a multirun.yaml of another Hydra version or sweeper: list the job dirs only
        return None
    return None


@contextlib.contextmanager
def job_in_run_dir(cfg: DictConfig) -> Iterator[float | None]:
    """Hold the job's run dir (utils/run_lock.py) and look at what an earlier run left there
    (`resumable_sweep_job`): yields the metric to return instead of training, or None to train. A run dir
    in use by another run, or a sweep dir of another sweep, prints the reason and exits with code 2,
    leaving the run dir untouched."""
    from medtransfer.utils.console import print_error
    from medtransfer.utils.run_lock import run_dir_lock

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(run_dir_lock(cfg.paths.output_dir))
            earlier = stack.enter_context(resumable_sweep_job(cfg))
        except ConfigError as err:  # the run dir is left as it was (the lock released on the way out)
            print_error(str(err))
            raise SystemExit(2) from None
        yield earlier


def job_state(job_dir: str | Path) -> str | None:
    """The state of a job dir without a status.json: "running" (its lock is held by a live process),
    "interrupted" (killed: a last.ckpt but no status), or None (unknown)."""
    from medtransfer.utils.run_lock import lock_is_live, read_lock

    job_dir = Path(job_dir)
    if lock_is_live(read_lock(job_dir)):
        return "running"
    if (job_dir / "checkpoints" / "last.ckpt").is_file():
        return "interrupted"
    return None


def unstarted_jobs(sweep_dir: str | Path, present: set[str]) -> list[tuple[str, list[str] | None]]:
    """The sweep's jobs (expected_jobs) whose directories are not in `present` (names): never started."""
    return [(name, overrides) for name, overrides in expected_jobs(sweep_dir) or [] if name not in present]
