"""`medtransfer-report <multirun dir>`: one table of every job of a sweep (overrides, status, best val
metric, test metrics, epochs, wall time) in the terminal, as CSV and Markdown; a table to paste into a
paper (jobs differing only by seed pooled as mean ± sd, bootstrap intervals, sorted by the optimized
metric, the best marked); and a PNG of the optimized metric against the swept parameters. A
cross-validation (jobs swept over data.fold) also gets cv_report.md/.csv (per fold, mean ± sd, the pooled
out-of-fold AUROC with its bootstrap interval) and the out-of-fold predictions (docs/cross_validation.md)."""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from medtransfer.callbacks.validation_predictions import PREDICTIONS_FILE
from medtransfer.evaluation.cross_validation import (
    mean_sd,
    pool,
    pooled_auroc,
    pooled_interval,
    read_predictions,
    write_predictions,
)
from medtransfer.utils.atomic_write import atomic_open, atomic_write_text
from medtransfer.utils.console import console, print_error, print_table
from medtransfer.utils.sweep_jobs import NEUTRAL_KEYS, job_state, unstarted_jobs

COLUMNS = ("val_best", "test/auroc", "test/acc", "test/balanced_acc", "epochs", "wall_time_s")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def job_dirs(multirun_dir: Path) -> list[Path]:
    """Job directories (those holding .hydra/overrides.yaml), in job-number order."""
    jobs = [p.parent.parent for p in Path(multirun_dir).glob("**/.hydra/overrides.yaml")]
    return sorted(jobs, key=lambda p: (len(p.parts), int(p.name) if p.name.isdigit() else math.inf, str(p)))


def collect(multirun_dir: str | Path) -> list[dict]:
    """A row per job: its overrides (key=value), status, metrics, epochs and wall time. Jobs that never
    started (known from the sweep's multirun.yaml: every grid job, or n_trials of a sampler) are listed
    with status "not started"; a job dir without status.json is "running" (its lock is held),
    "interrupted" (a last.ckpt) or "unknown"."""
    rows = []
    for job in job_dirs(Path(multirun_dir)):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        config_file = job / ".hydra" / "config.yaml"
        config = (yaml.safe_load(config_file.read_text()) if config_file.is_file() else None) or {}
        status = _read_json(job / "status.json")
        metrics = _read_json(job / "metrics.json")
        optimized = config.get("optimized_metric", "val/auroc")
        row = {
            "job": job.name,
            "overrides": " ".join(overrides),
            **dict(o.split("=", 1) for o in overrides if "=" in o),
            "status": status.get("status") or job_state(job) or ("completed" if metrics else "unknown"),
            "optimized_metric": optimized,
            "val_best": metrics.get(f"{optimized}_best"),
            **{k: v for k, v in metrics.items() if k != f"{optimized}_best"},
            "wall_time_s": status.get("wall_time_s"),
            "error": status.get("error", status.get("objective", "")),
            "dir": str(job),
        }
        rows.append(row)
    # jobs of the sweep that never started (from its multirun.yaml), in job order
    for name, overrides in unstarted_jobs(multirun_dir, {r["job"] for r in rows}):
        pairs = dict(o.split("=", 1) for o in overrides or [] if "=" in o)
        rows.append({"job": name, "overrides": " ".join(overrides or []), **pairs, "status": "not started"})
    return sorted(rows, key=lambda r: int(r["job"]) if r["job"].isdigit() else math.inf)


def swept_keys(rows: list[dict]) -> list[str]:
    """Override keys whose value differs between jobs."""
    keys = [k for r in rows for k in r["overrides"].split() for k in [k.split("=", 1)[0]]]
    keys = list(dict.fromkeys(keys))
    return [k for k in keys if len({r.get(k) for r in rows}) > 1]


def write_csv(rows: list[dict], path: Path) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


def problems(rows: list[dict]) -> list[str]:
    """One line per job that failed, was interrupted or gave the sweeper no value: job, status and why."""
    return [
        f"job {r['job']} ({r['status']}): {str(r.get('error') or 'see its status.json').splitlines()[0]}"
        for r in rows
        if r["status"] != "completed" or r.get("error")
    ]


def markdown(rows: list[dict], keys: list[str]) -> str:
    text = table_markdown(rows, ["job", *keys, "status", *COLUMNS])
    listed = problems(rows)
    if listed:
        text += "\n".join(["", "Jobs without a result:", "", *[f"- {line}" for line in listed]]) + "\n"
    return text


def _short(value) -> str:
    """A path-like value as `<first folder>/…/<file>`, so that plot labels stay readable."""
    text = str(value)
    if "/" not in text or len(text) <= 24:
        return text
    parts = [p for p in Path(text).parts if p not in ("outputs", ".", "..", "/")]
    return f"{parts[0]}/…/{parts[-1]}" if len(parts) > 2 else text


def plot(
    rows: list[dict], keys: list[str], path: Path, metric: str = "val_best", title: str | None = None
) -> Path | None:
    """The metric against the first numeric swept key (lr: log axis), one line per value of the others;
    with no numeric key, a bar per job. A row's `<metric>_sd` (seeds pooled) is drawn as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if isinstance(r.get(metric), int | float) and not math.isnan(r[metric])]
    if not done:
        return None

    def numeric(key):
        try:
            [float(r[key]) for r in done]
            return True
        except (TypeError, ValueError):
            return False

    x_key = next((k for k in keys if numeric(k)), None)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.35 * max(len(done), 6)))
    if x_key:
        others = [k for k in keys if k != x_key]
        lines: dict[str, list] = {}
        for r in done:
            lines.setdefault(" ".join(f"{k}={r.get(k)}" for k in others) or "all", []).append(
                (float(r[x_key]), r[metric], r.get(f"{metric}_sd") or 0.0)
            )
        for label, points in sorted(lines.items()):
            xs, ys, sds = zip(*sorted(points), strict=True)
            ax.errorbar(xs, ys, yerr=sds if any(sds) else None, marker="o", capsize=3, label=label)
        if "lr" in x_key.split(".")[-1]:
            ax.set_xscale("log")
        ax.set_xlabel(x_key)
        ax.legend(fontsize=8)
    else:
        labels = [
            ", ".join(f"{k.split('.')[-1]}={_short(r.get(k))}" for k in keys)
            or r.get("job", r.get("run", "all"))
            for r in done
        ]
        sds = [r.get(f"{metric}_sd") or 0.0 for r in done]
        ax.barh(range(len(done)), [r[metric] for r in done], xerr=sds if any(sds) else None)
        ax.set_yticks(range(len(done)), labels, fontsize=8)
        lo = min(r[metric] for r in done)
        ax.set_xlim(max(0.0, lo - 0.05), 1.0)
        for i, r in enumerate(done):
            ax.text(r[metric], i, f" {r[metric]:.3f}", va="center", fontsize=8)
    ax.set_title(title or f"{metric} per job")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report(
    multirun_dir: str | Path, out_dir: str | Path | None = None, rows: list[dict] | None = None
) -> dict[str, Path]:
    """Writes report.csv, report.md and report.png (into the multirun dir unless out_dir) and prints the
    table. `rows`: the jobs as `collect` gives them, when the caller has read them already."""
    multirun_dir = Path(multirun_dir)
    out = Path(out_dir) if out_dir else multirun_dir
    out.mkdir(parents=True, exist_ok=True)
    rows = collect(multirun_dir) if rows is None else rows
    if not rows:
        raise SystemExit(f"{multirun_dir}: no jobs found (no */.hydra/overrides.yaml below it).")
    keys = swept_keys(rows)
    for row in rows:
        row.setdefault("run", run_label(row, keys))
    print_table(f"sweep {multirun_dir}", rows, columns=["job", *keys, "status", *COLUMNS])
    groups = seed_groups(rows, keys)
    table = summary_table(groups)
    print_table(summary_title(groups), table)
    paths = {"csv": out / "report.csv", "markdown": out / "report.md", "summary": out / "summary.csv"}
    write_csv(rows, paths["csv"])
    if groups:
        write_csv(groups, paths["summary"])
    else:
        del paths["summary"]
    atomic_write_text(
        paths["markdown"],
        f"## {summary_title(groups)}\n\n{table_markdown(table)}\n## Jobs\n\n{markdown(rows, keys)}",
    )
    group_keys = [k for k in keys if k != "seed"]
    png = plot(groups, group_keys, out / "report.png", title=summary_title(groups)) if groups else None
    if png:
        paths["png"] = png
    failed = [r["job"] for r in rows if r["status"] != "completed"]
    if failed:
        console.print(f"[red]{len(failed)} job(s) did not complete: {', '.join(failed)}[/red]")
    for line in problems(rows):
        console.print(line, style="red", markup=False)
    return paths


FOLD_KEY = "data.fold"
CV_METRICS = ("val_best", "test/auroc", "test/acc", "test/balanced_acc")


def _overrides_of(row: dict) -> list[str]:
    job_file = Path(row["dir"]) / ".hydra" / "overrides.yaml" if row.get("dir") else None
    if job_file is not None and job_file.is_file():
        return [str(o) for o in yaml.safe_load(job_file.read_text()) or []]
    return row["overrides"].split()


def cv_settings(rows: list[dict]) -> dict[str, list[dict]]:
    """The jobs of a sweep over data.fold, grouped by their other overrides (one cross-validation per
    setting, e.g. per learning rate): {"key=value …" (or "all"): [rows in fold order]}. Empty when no job
    sets data.fold."""
    settings: dict[str, list[dict]] = {}
    for row in rows:
        overrides = _overrides_of(row)
        if not any(o.split("=", 1)[0] == FOLD_KEY for o in overrides):
            continue
        rest = sorted(
            o for o in overrides if o.lstrip("+~").split("=", 1)[0] not in (FOLD_KEY, *NEUTRAL_KEYS)
        )
        settings.setdefault(" ".join(rest) or "all", []).append(row)
    for jobs in settings.values():
        jobs.sort(key=lambda r: int(r.get(FOLD_KEY, -1)))
    # named by the overrides that tell the settings apart (all of them alike: "all")
    split = {name: dict(o.split("=", 1) for o in name.split() if "=" in o) for name in settings}
    keys = {k for pairs in split.values() for k in pairs}
    differ = sorted(k for k in keys if len({pairs.get(k) for pairs in split.values()}) > 1)
    return {
        " ".join(f"{k}={split[name].get(k)}" for k in differ) or "all": jobs
        for name, jobs in settings.items()
    }


def _non_test_paths(jobs: list[dict]) -> set[str] | None:
    """The images outside the test split, from the folds.csv of a job of the setting (None if none has one)."""
    for row in jobs:
        folds_csv = Path(row.get("dir") or "") / "folds.csv"
        if row.get("dir") and folds_csv.is_file():
            with folds_csv.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
                return {r["path"] for r in csv.DictReader(f) if r["fold"] != "test"}
    return None


def cv_summary(
    jobs: list[dict], oof_file: Path, samples: int = 1000, seed: int = 0
) -> tuple[list[dict], list[str]]:
    """The rows of one setting's CV report: one per fold, then mean, sd, and pooled (out-of-fold AUROC
    with its bootstrap 95 % interval); writes the out-of-fold predictions to `oof_file`. Also the notes
    (missing folds, images without an out-of-fold prediction), which the report prints loudly."""
    table = [
        {"fold": r.get(FOLD_KEY), "job": r["job"], "status": r["status"], **{k: r.get(k) for k in CV_METRICS}}
        for r in jobs
    ]
    notes = [f"fold {r['fold']} (job {r['job']}): {r['status']}" for r in table if r["status"] != "completed"]
    for stat, index in (("mean", 0), ("sd", 1)):
        table.append(
            {
                "fold": stat,
                "status": f"{sum(r['status'] == 'completed' for r in jobs)} of {len(jobs)} folds",
                **{
                    k: mean_sd([r.get(k) for r in jobs if r["status"] == "completed"])[index]
                    for k in CV_METRICS
                },
            }
        )
    parts = [
        (f"job {r['job']}", read_predictions(Path(r["dir"]) / PREDICTIONS_FILE))
        for r in jobs
        if r["status"] == "completed" and r.get("dir") and (Path(r["dir"]) / PREDICTIONS_FILE).is_file()
    ]
    done = [r for r in jobs if r["status"] == "completed"]
    if len(parts) < len(done):
        notes.append(
            f"{len(done) - len(parts)} completed fold job(s) wrote no {PREDICTIONS_FILE} (trained with "
            "callbacks that leave out validation_predictions?): their images are missing from the pooled metrics"
        )
    if not parts:
        return table, notes
    pooled = pool(parts)
    expected = _non_test_paths(jobs)
    if expected is not None:
        missing = expected - set(pooled.paths)
        if missing:
            notes.append(
                f"{len(missing)} of {len(expected)} images outside the test split have no out-of-fold "
                "prediction (a fold did not complete): the pooled metrics are of the others only"
            )
    write_predictions(oof_file, pooled)
    value = pooled_auroc(pooled)
    interval = pooled_interval(pooled, samples, seed)
    table.append(
        {
            "fold": "pooled",
            "status": f"{len(pooled.paths)} out-of-fold images",
            "oof_auroc": value,
            "oof_auroc_low": interval[0] if interval else None,
            "oof_auroc_high": interval[1] if interval else None,
            "oof_file": oof_file.name,
        }
    )
    return table, notes


def cv_report(
    sweep_dir: str | Path, rows: list[dict] | None = None, samples: int = 1000, seed: int = 0
) -> dict[str, Path]:
    """cv_report.csv/.md and the out-of-fold predictions (oof_predictions.csv; with several settings
    oof_predictions_<n>.csv, n as listed in the report) in the sweep dir, when its jobs are swept over
    data.fold. Returns the written paths ({} for a sweep without folds)."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir) if rows is None else rows
    settings = cv_settings(rows)
    if not settings:
        return {}
    all_rows, lines, all_notes = [], [], []
    for n, (setting, jobs) in enumerate(settings.items()):
        oof = sweep_dir / ("oof_predictions.csv" if len(settings) == 1 else f"oof_predictions_{n}.csv")
        table, notes = cv_summary(jobs, oof, samples, seed)
        all_rows += [{"setting": setting, **r} for r in table]
        all_notes += [f"{setting}: {note}" for note in notes]
        lines += _cv_markdown(setting, table, notes)
    paths = {"cv_csv": sweep_dir / "cv_report.csv", "cv_markdown": sweep_dir / "cv_report.md"}
    write_csv(all_rows, paths["cv_csv"])
    atomic_write_text(paths["cv_markdown"], "\n".join(lines) + "\n")
    for setting in settings:
        pooled = next((r for r in all_rows if r["setting"] == setting and r["fold"] == "pooled"), None)
        mean = next(r for r in all_rows if r["setting"] == setting and r["fold"] == "mean")
        sd = next(r for r in all_rows if r["setting"] == setting and r["fold"] == "sd")
        text = f"CV {setting}: val_best {_cell(mean['val_best'])} ± {_cell(sd['val_best'])}"
        if pooled:
            text += f", pooled out-of-fold AUROC {_interval(pooled)}"
        console.print(text, markup=False)
    for note in all_notes:
        console.print(note, style="red", markup=False)
    return paths


def _interval(row: dict) -> str:
    low, high = row.get("oof_auroc_low"), row.get("oof_auroc_high")
    ci = f" (95% CI {low:.4f}–{high:.4f})" if low is not None and high is not None else ""
    return f"{_cell(row['oof_auroc'])}{ci}"


def _cv_markdown(setting: str, table: list[dict], notes: list[str]) -> list[str]:
    folds = [r for r in table if r["fold"] != "pooled"]
    lines = [f"## {setting}", "", *table_markdown(folds, ["fold", "job", "status", *CV_METRICS]).splitlines()]
    pooled = next((r for r in table if r["fold"] == "pooled"), None)
    if pooled:
        lines += [
            "",
            f"Pooled out-of-fold AUROC ({pooled['status']}, {pooled['oof_file']}): {_interval(pooled)}",
        ]
    lines += ["", *[f"- **{note}**" for note in notes], ""] if notes else [""]
    return lines


# ---- the table for a paper: jobs that differ only by `seed` pooled (mean ± sd), bootstrap intervals,
# sorted by the optimized metric, the best marked
SUMMARY_METRICS = ("val_best", "test/auroc", "test/acc")
INTERVALS = ("test/auroc", "test/acc")  # with <metric>_ci_low / _ci_high in metrics.json


def run_label(row: dict, keys: list[str]) -> str:
    """A job named by what differs: `finetune=full,optimizer.lr=0.001` (its TensorBoard run's name)."""
    return ",".join(f"{k}={row.get(k)}" for k in keys) or str(row.get("job"))


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def seed_groups(rows: list[dict], keys: list[str]) -> list[dict]:
    """One row per configuration (completed jobs with equal swept values apart from `seed`): `run`, `n`,
    the mean and standard deviation (n > 1) of each metric, the mean interval bounds, sorted best first
    by the optimized metric (ascending when it is a loss), the first marked `best`."""
    group_keys = [k for k in keys if k != "seed"]
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("status") == "completed" and _number(row.get("val_best")) is not None:
            grouped.setdefault(run_label(row, group_keys) if group_keys else "all", []).append(row)
    groups = []
    for label, members in grouped.items():
        group = {"run": label, **{k: members[0].get(k) for k in group_keys}, "n": len(members)}
        group["seeds"] = " ".join(str(m.get("seed", "")) for m in members) if "seed" in keys else ""
        for metric in SUMMARY_METRICS:
            values = [v for m in members if (v := _number(m.get(metric))) is not None]
            group[metric] = sum(values) / len(values) if values else None
            group[f"{metric}_sd"] = statistics.stdev(values) if len(values) > 1 else None
        for metric in INTERVALS:
            for bound in ("ci_low", "ci_high"):
                values = [v for m in members if (v := _number(m.get(f"{metric}_{bound}"))) is not None]
                group[f"{metric}_{bound}"] = sum(values) / len(values) if values else None
        group["jobs"] = " ".join(str(m["job"]) for m in members)
        group["optimized_metric"] = members[0].get("optimized_metric", "val/auroc")
        groups.append(group)
    lower_is_better = bool(groups) and "loss" in str(groups[0]["optimized_metric"])
    groups.sort(key=lambda g: g["val_best"] if lower_is_better else -g["val_best"])
    for i, group in enumerate(groups):
        group["best"] = "★" if i == 0 else ""
    return groups


def summary_title(groups: list[dict]) -> str:
    metric = groups[0]["optimized_metric"] if groups else "val/auroc"
    pooled = any(g["n"] > 1 for g in groups)
    return (
        f"Sorted by {metric}_best, ★ best"
        + ("; jobs differing only by seed pooled: mean ± sd (n)" if pooled else "")
        + "; test: 95% bootstrap interval"
        + (" (mean bounds over seeds)" if pooled else "")
    )


def _mean_sd(group: dict, metric: str) -> str:
    mean, sd = group.get(metric), group.get(f"{metric}_sd")
    if mean is None:
        return ""
    return f"{mean:.3f} ± {sd:.3f}" if sd is not None else f"{mean:.3f}"


def summary_table(groups: list[dict]) -> list[dict]:
    """The groups as text cells: run, n, best, val_best, and each test metric with its interval."""
    table = []
    for group in groups:
        row = {"run": group["run"], "n": group["n"], "best": group["best"]}
        row[f"{group['optimized_metric']}_best"] = _mean_sd(group, "val_best")
        for metric in SUMMARY_METRICS[1:]:
            low, high = group.get(f"{metric}_ci_low"), group.get(f"{metric}_ci_high")
            interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
            row[metric] = _mean_sd(group, metric) + interval
        table.append(row)
    return table


def table_markdown(table: list[dict], columns: list[str] | None = None) -> str:
    """A Markdown table of the rows' `columns` (default: the first row's keys), cells as `_cell` writes them."""
    if not table:
        return "(no completed job)\n"
    columns = columns or list(table[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in table]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="medtransfer-report", description=__doc__.splitlines()[0])
    parser.add_argument("multirun_dir")
    parser.add_argument(
        "--out", default=None, help="folder for report.csv/.md/.png (default: the multirun dir)"
    )
    args = parser.parse_args()
    paths = report(args.multirun_dir, args.out)
    paths.update(cv_report(args.multirun_dir))
    for kind, path in paths.items():
        console.print(f"{kind}: {path}")


def scalars(run_dir: str | Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one TensorBoard scalar of a run: the events in its tensorboard/ folder, or in the
    one folder below it that a multirun job names by its overrides."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = Path(run_dir) / "tensorboard"
    events = sorted(folder.rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events[-1].parent if events else folder), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in acc.Scalars(tag)]


class SweepSummary(Callback):
    """Hydra callback at the end of a multirun: the sweep report in the sweep dir, and exit code 1 when
    any job failed (each job records its own status.json, and the sweep went on past failures)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect(sweep_dir) if sweep_dir.is_dir() else []
        if not rows:
            return  # a remote launcher (SLURM) returns before its jobs write anything here
        report(sweep_dir, rows=rows)
        cv_report(sweep_dir, rows)
        failed = [r for r in rows if r["status"] == "failed"]
        if failed:
            started = [r for r in rows if r["status"] != "not started"]
            head = (
                f"no trial completed: all {len(failed)} jobs failed"
                if len(failed) == len(started)
                else f"{len(failed)} of {len(started)} jobs failed"
            )
            keys = swept_keys(rows)
            lines = [
                f"job {r['job']}{' (' + ' '.join(f'{k}={r.get(k)}' for k in keys) + ')' if keys else ''}: "
                f"{str(r.get('error') or 'see its status.json').splitlines()[0]}\n"
                f"  {Path(r['dir']) / 'status.json'}"
                for r in failed
            ]
            print_error("\n".join([f"{head}:", *lines]), title="sweep: failed jobs")
            raise SystemExit(1)


if __name__ == "__main__":
    main()
