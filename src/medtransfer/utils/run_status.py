"""Running one job of an entry point: a clean message for errors the user can fix, and status.json in the
run dir (completed with wall time, or failed with the error and a traceback file)."""

from __future__ import annotations

import contextlib
import json
import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf.errors import MissingMandatoryValue

from medtransfer.utils.atomic_write import RunFileWriteError, atomic_write_json, atomic_write_text
from medtransfer.utils.console import print_error
from medtransfer.utils.errors import ConfigError, UserError
from medtransfer.utils.sweep_jobs import task_overrides


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@rank_zero_only
def write_status(output_dir: str | Path, status: str, wall_time_s: float, **extra: Any) -> None:
    path = Path(output_dir)
    path.mkdir(parents=True, exist_ok=True)
    extra.setdefault("overrides", task_overrides())  # a sweep re-run compares them
    try:  # atomic; a full disk must not hide the error being recorded
        atomic_write_json(
            path / "status.json", {"status": status, "wall_time_s": round(wall_time_s, 2), **extra}
        )
    except RunFileWriteError as err:
        print_error(str(err), title="status.json not written")


# what a required setting looks like, for the message when it is missing
REQUIRED_EXAMPLES = {
    "ckpt_path": "ckpt_path=outputs/train/runs/<time>/checkpoints/best.ckpt",
    "input": "input=<a folder or file of images>",
}


def user_error(err: BaseException) -> UserError | None:
    """The UserError behind `err`, also when Hydra's instantiate wrapped it; a required setting left
    unset (OmegaConf's MissingMandatoryValue, `???` in the config) is one too."""
    while err is not None:
        if isinstance(err, UserError):
            return err
        if isinstance(err, MissingMandatoryValue):
            key = str(err.full_key or err.key)
            example = REQUIRED_EXAMPLES.get(key, f"{key}=VALUE")
            return ConfigError(
                f"{key} is required and was not given: add it to the command line, e.g. {example}."
            )
        err = err.__cause__ or err.__context__
    return None


def run_job(fn: Callable[[], Any], output_dir: str | Path) -> Any:
    """Call `fn`. A UserError becomes a short message (exit code 2 in a single run); inside a multirun any
    failure is recorded and the sweep goes on with the next job (the job returns NaN; the train command
    hands the sweeper None instead, see `sweep_objective`)."""
    start = time.time()
    try:
        result = fn()
    except (KeyboardInterrupt, SystemExit) as err:
        # Ctrl-C (Lightning turns it into SystemExit) or SIGTERM (SIGTERMException): last.ckpt was saved
        # on the way out (SaveOnInterrupt); a sweep stops too
        # a run that can be continued says how (medtransfer-eval and -predict are simply run again)
        resumable = (Path(output_dir) / "checkpoints" / "last.ckpt").is_file()
        extra = {"resume": f"medtransfer-train resume={output_dir}"} if resumable else {}
        write_status(output_dir, "interrupted", time.time() - start, **extra)
        raise SystemExit(143 if isinstance(err, SIGTERMException) else 130) from None
    except Exception as err:
        trace = Path(output_dir) / "traceback.txt"
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(RunFileWriteError):
            atomic_write_text(trace, traceback.format_exc())
        cause = user_error(err)
        shown = cause or err  # the user's error, not Hydra's wrapper of it (InstantiationException)
        write_status(
            output_dir,
            "failed",
            time.time() - start,
            error=f"{shown.__class__.__name__}: {shown}",
            traceback=str(trace),
        )
        if cause is not None:
            print_error(str(cause))
            if not _is_multirun():
                raise SystemExit(2) from None
        elif not _is_multirun():
            raise
        else:
            print_error(
                f"{err.__class__.__name__}: {err}\n(traceback in {trace})",
                title="job failed; the sweep goes on",
            )
        return float("nan")
    write_status(output_dir, "completed", time.time() - start)
    return result


def sweep_objective(value: Any, output_dir: str | Path, name: str = "the optimized metric") -> float | None:
    """What a job returns to Hydra's sweeper: `value` as a float when it is a finite number, else None.

    A NaN return crashes hydra-optuna-sweeper 1.3 (optuna refuses the value, then the sweeper tells the
    failed trial with the NaN again: facebookresearch/hydra#2237) and so ends the whole sweep. None cannot
    be cast to float, which the sweeper records as a failed trial (TrialState.FAIL) before going on with
    the next. A completed job whose metric is not finite says so in its status.json ("objective")."""
    number = float(value) if isinstance(value, int | float) else math.nan
    if math.isfinite(number):
        return number
    status = Path(output_dir) / "status.json"
    if _is_multirun() and status.is_file():
        saved = json.loads(status.read_text())
        if saved.get("status") == "completed":
            saved["objective"] = (
                f"{name} is {value}: the sweeper records this trial as failed (no value to compare)"
            )
            _rewrite_status(status, saved)
    return None


@rank_zero_only
def _rewrite_status(path: Path, content: dict) -> None:
    atomic_write_json(path, content)
