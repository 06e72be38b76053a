"""A Hydra callback for the end of a multirun: the sweep report in the sweep dir, and exit code 1 when any
job failed (each job records its own status.json, and the sweep went on past failures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from medtransfer.console import console


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from medtransfer.report import collect, report

        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect(sweep_dir) if sweep_dir.is_dir() else []
        if not rows:
            return  # a remote launcher (SLURM) returns before its jobs write anything here
        report(sweep_dir, rows=rows)
        failed = [r for r in rows if r["status"] == "failed"]
        if failed:
            console.print(
                f"[red]{len(failed)} job(s) failed; see status.json and traceback.txt in their run dirs.[/red]"
            )
            raise SystemExit(1)
