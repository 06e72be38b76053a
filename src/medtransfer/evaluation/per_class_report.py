"""The per-class report: precision, recall, F1 and support of every class, with the confusion matrix in
the same rows (true class) and columns `predicted <class>`, as CSV and Markdown."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medtransfer.utils.atomic_write import atomic_open


def per_class_rows(predictions, targets, class_names: Sequence[str]) -> list[dict]:
    """One row per true class: precision, recall, F1, support, and how many of its images went to each
    predicted class. Undefined values are None (written n/a): precision of a class never predicted, recall
    of a class without images (an evaluated set may hold a subset of the classes), F1 of a class with
    neither."""
    predictions, targets = np.asarray(predictions), np.asarray(targets)
    n = len(class_names)
    matrix = np.bincount(targets * n + predictions, minlength=n * n).reshape(n, n)
    rows = []
    for k, name in enumerate(class_names):
        tp, predicted, support = matrix[k, k], matrix[:, k].sum(), matrix[k].sum()
        precision = float(tp / predicted) if predicted else None
        recall = float(tp / support) if support else None
        # F1 = 2 TP / (2 TP + FP + FN): 0 for a class predicted but absent, undefined with neither
        f1 = float(2 * tp / (predicted + support)) if predicted + support else None
        row = {"class": name, "precision": precision, "recall": recall, "f1": f1, "support": int(support)}
        row.update({f"predicted {c}": int(matrix[k, j]) for j, c in enumerate(class_names)})
        rows.append(row)
    return rows


def write_csv(rows: list[dict], path: str | Path) -> None:
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})


def to_markdown(rows: list[dict], title: str, notes: Sequence[str] = ()) -> str:
    columns = list(rows[0])
    lines = [f"# {title}", "", *[f"{note}  " for note in notes]]
    if notes:
        lines.append("")
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|")
    for row in rows:
        cells = [_cell(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
