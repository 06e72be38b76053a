"""Optuna sweeps that end without a best trial. Every job of a medtransfer sweep records its own failure
(status.json) and hands the sweeper None, a failed trial (run_status.sweep_objective), so the sweep goes
on. hydra-optuna-sweeper 1.3 still ends two such sweeps with its own traceback once every trial has run:

- no trial completed: it asks the study for its best trial (`ValueError: No trials are completed yet`);
- the grid sampler's last trial failed: telling the failure makes the exhausted grid stop the study outside
  an objective (`RuntimeError: Study.stop is supposed to be invoked inside an objective function…`),
  which the sweeper tolerates for a completed trial only.

`guard_optuna_sweeps` turns both into a message and lets the sweep end as any sweep with failed jobs does:
the report (report.SweepSummary), the failed jobs with their status.json, exit code 1. The sweeper's
optimization_results.yaml is not written then (there is no best trial, or the sweeper stopped before it)."""

from __future__ import annotations

import functools
import logging

from medtransfer.utils.console import print_error

log = logging.getLogger(__name__)

# the exceptions of hydra-optuna-sweeper 1.3 / optuna 2.x at the end of a sweep, and what they mean
ENDINGS = {
    "No trials are completed yet": "no trial completed, so Optuna has no best trial",
    "`Study.stop` is supposed to be invoked": "the grid's last trial failed, which stops Optuna's study",
}


def ending(err: ValueError | RuntimeError) -> str | None:
    """What `err` says about a sweep whose trials have all run, or None for any other error."""
    return next((why for text, why in ENDINGS.items() if text in str(err)), None)


def guard_optuna_sweeps() -> None:
    """Wrap the Optuna sweeper's `sweep` (when the plugin is installed) so that the two endings above
    print a message and return instead of raising; any other error is raised as before."""
    try:
        from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
    except ImportError:
        return
    sweep = OptunaSweeperImpl.sweep
    if getattr(sweep, "medtransfer_guard", False):
        return

    @functools.wraps(sweep)
    def guarded(self, arguments):
        try:
            return sweep(self, arguments)
        except (ValueError, RuntimeError) as err:
            why = ending(err)
            if why is None:
                raise
            print_error(
                f"The Optuna sweep ended: {why}. Every trial ran and recorded its outcome; the failed ones "
                "are listed below with their status.json. optimization_results.yaml is not written.",
                title="sweep: no best trial" if "no trial" in why else "sweep: last trial failed",
            )
            log.warning("Optuna sweep ended: %s (%s: %s)", why, err.__class__.__name__, err)
            return None

    guarded.medtransfer_guard = True
    OptunaSweeperImpl.sweep = guarded
