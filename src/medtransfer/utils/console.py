"""Rich console output: the config tree, tables of layer groups, data and metrics, error messages.
Everything here prints on rank zero only, so DDP does not print twice, and goes as plain text into the
run's log file too (logger `medtransfer.console`: the file handler of conf/hydra/job_logging/)."""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.tree import Tree

console = Console()
file_log = logging.getLogger("medtransfer.console")


def setup_logging() -> None:
    """Python warnings (Lightning's too) into logging: the terminal and the run's log file."""
    logging.captureWarnings(True)


def show(renderable, style: str | None = None) -> None:
    """On the terminal (Rich) and, as plain text, in the log file."""
    console.print(renderable, style=style)
    if file_log.handlers:
        plain = Console(width=120, color_system=None, file=io.StringIO())
        plain.print(renderable)
        file_log.info("\n%s", plain.file.getvalue().rstrip())


@rank_zero_only
def print_config(
    cfg: DictConfig,
    order: tuple[str, ...] = ("data", "model", "finetune", "optimizer", "scheduler", "trainer"),
) -> None:
    tree = Tree("config", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(f"[bold]{key}[/bold]").add(text.rstrip())
    show(tree)


@rank_zero_only
def print_table(title: str, rows: list[Mapping], columns: list[str] | None = None) -> None:
    if not rows:
        return
    columns = columns or list(rows[0])
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        table.add_row(*[_fmt(row.get(c)) for c in columns])
    show(table)


@rank_zero_only
def print_warning(message: str, title: str = "medtransfer: changed") -> None:
    """Something the run did differently from what the config says, in a yellow panel (and the log file)."""
    show(Panel(message, title=title, border_style="yellow", title_align="left"))


@rank_zero_only
def print_metrics(metrics: Mapping[str, float], title: str = "metrics") -> None:
    print_table(title, [{"metric": k, "value": v} for k, v in sorted(metrics.items())])


@rank_zero_only
def print_data_summary(summary: Mapping) -> None:
    """The data at a glance: images per class and split (multi-label: positives per label, and unknown
    values), class weights (pos weights), then the task, sizes, modes and skipped files."""
    classes = summary["classes"]
    rows = [{"split": s, **counts, "total": summary["totals"][s]} for s, counts in summary["counts"].items()]
    if "pos_weights" in summary:
        rows += [
            {"split": f"{s} unknown", **unknown}
            for s, unknown in summary["unknown"].items()
            if any(unknown.values())
        ]
        rows.append({"split": "pos weight", **summary["pos_weights"]})
    else:
        rows.append({"split": "class weight", **summary["class_weights"]})
    title = "data (positives per label)" if "pos_weights" in summary else "data"
    print_table(title, rows, columns=["split", *classes, "total"])
    sizes = summary.get("original_sizes") or {}
    side = summary.get("image_size")
    resized = sizes and side is not None and {*sizes["height"], *sizes["width"]} != {side}
    task = summary.get("task")
    details = {
        "task": None
        if task is None
        else f"{task} ({'inferred' if summary.get('task_requested') == 'auto' else 'data.task'})",
        # what the network sees: every image is resized to this square, whatever a preset or the files say
        "network input": f"{side}×{side} px" + (" (images resized to it)" if resized else "")
        if side is not None
        else None,
        "channels": summary["channels"],
        "image sizes": f"height {sizes['height'][0]}–{sizes['height'][1]}, width {sizes['width'][0]}–{sizes['width'][1]}"
        if sizes
        else None,
        "modes": ", ".join(f"{m} {n}" for m, n in (summary.get("channel_modes") or {}).items()) or None,
        "sampler": summary.get("sampler") or "shuffle",
        "in memory": summary.get("in_memory"),
        "skipped files": summary.get("skipped_files", 0),
    }
    print_table("data details", [{"": k, "value": v} for k, v in details.items() if v is not None])


@rank_zero_only
def print_error(message: str, title: str = "medtransfer: cannot start") -> None:
    show(Panel(message, title=title, border_style="red", expand=False))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
