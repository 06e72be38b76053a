"""The per-class report: precision, recall, F1 and support of every class, with the confusion matrix in
the same rows (true class) and columns `predicted <class>`, as CSV and Markdown."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from medtransfer.utils.atomic_write import atomic_open


def per_class_rows(predictions, targets, class_names: Sequence[str]) -> list[dict]:
    """One row per true class: precision, recall, F1 (0 where undefined), support, and how many of its
    images went to each predicted class."""
    # scikit-learn comes with grad-cam (explanations.py); imported here, where it is used, as grad-cam does
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predictions, labels=labels, zero_division=0
    )
    matrix = confusion_matrix(targets, predictions, labels=labels)
    return [
        {
            "class": name,
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(support[k]),
            **{f"predicted {c}": int(matrix[k, j]) for j, c in enumerate(class_names)},
        }
        for k, name in enumerate(class_names)
    ]


def write_csv(rows: list[dict], path: str | Path) -> None:
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})


def to_markdown(rows: list[dict], title: str, notes: Sequence[str] = ()) -> str:
    columns = list(rows[0])
    lines = [f"# {title}", "", *[f"{note}  " for note in notes]]
    if notes:
        lines.append("")
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|")
    for row in rows:
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
