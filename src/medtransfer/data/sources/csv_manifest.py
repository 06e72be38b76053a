"""`data=csv`: a manifest, one row per image: its path (relative to data.root) and label, optionally its
patient and its split. With a split column the split is used as it is; without one, the images are split
here, stratified by label, with all images of a patient in one split."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

from medtransfer.data.files.validation import Problem
from medtransfer.data.items import Item
from medtransfer.data.sources.image_files import ImageFilesDataModule, Listing
from medtransfer.data.splits import SPLITS
from medtransfer.utils.errors import ConfigError, DataError

DEFAULT_COLUMNS = {"path": "path", "label": "label", "patient": "patient_id", "split": "split"}


class CsvDataModule(ImageFilesDataModule):
    """manifest: the CSV file. root: the folder its paths are relative to (None: the manifest's folder).
    columns: names of the path, label, patient and split columns (see DEFAULT_COLUMNS); an optional column
    under its default name may be absent, one named otherwise must exist, None switches it off.
    classes: the labels in label order; a row with another label is a problem. None: the sorted labels found."""

    def __init__(
        self,
        manifest: str,
        root: str | None = None,
        columns: Mapping[str, str | None] | None = None,
        classes: Sequence[str] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.manifest = Path(manifest).expanduser().resolve()
        self.root = Path(root).expanduser().resolve() if root else self.manifest.parent
        unknown = set(columns or {}) - set(DEFAULT_COLUMNS)
        if unknown:
            raise ConfigError(
                f"data.columns has unknown keys {sorted(unknown)}; the keys are {', '.join(DEFAULT_COLUMNS)}."
            )
        self.columns = {**DEFAULT_COLUMNS, **dict(columns or {})}
        self.declared_classes = [str(c) for c in classes] if classes else None
        self._split_given: bool | None = None

    def describe_source(self) -> dict:
        return {
            "type": "csv",
            "manifest": str(self.manifest),
            "root": str(self.root),
            "columns": self.columns,
        }

    def locate(self, split: str, cls: str | None = None) -> str:
        if self._split_given:
            return f"{self.manifest} ({self.columns['split']} = {split})"
        return f"{self.manifest} (the {split} split made by medtransfer)"

    def _column(self, key: str, header: list[str]) -> str | None:
        """The column for `key`, None when an optional column is off or absent under its default name."""
        name = self.columns[key]
        if name in header:
            return name
        if key in ("patient", "split") and name in (None, DEFAULT_COLUMNS[key]):
            return None
        raise DataError(
            f"{self.manifest}: no column {name!r} (data.columns.{key}); its columns are {', '.join(header) or 'none'}. "
            f"Set data.columns.{key} to the column that holds the {key}s."
        )

    def list_items(self) -> Listing:
        if not self.manifest.is_file():
            raise DataError(
                f"data.manifest={self.manifest}: no such file. Give a CSV with one row per image."
            )
        with open(self.manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            path_col, label_col = self._column("path", header), self._column("label", header)
            patient_col, split_col = self._column("patient", header), self._column("split", header)
            self._split_given = split_col is not None
            items, problems = [], []
            for row in reader:
                item, problem = self._item(
                    row,
                    f"{self.manifest.name} line {reader.line_num}",
                    path_col,
                    label_col,
                    patient_col,
                    split_col,
                )
                items += [item] if item else []
                problems += [problem] if problem else []
        classes = self.declared_classes or sorted({i.label for i in items})
        return Listing(items=items, classes=classes, split_given=self._split_given, problems=problems)

    def _item(
        self,
        row: dict,
        line: str,
        path_col: str,
        label_col: str,
        patient_col: str | None,
        split_col: str | None,
    ):
        """(Item, None) for a usable row, (None, Problem) otherwise."""
        cell = (row.get(path_col) or "").strip()
        if not cell:
            return None, Problem(
                f"{self.manifest} ({line})",
                "the row has no image path",
                "fill in the path, or remove the row",
            )
        path = str(self.root / cell)
        label = (row.get(label_col) or "").strip()
        split = (row.get(split_col) or "").strip().lower() if split_col else None
        if not Path(path).is_file():
            return None, Problem.of_file(
                path,
                f"missing file, listed on {line}",
                f"correct the path (relative to data.root={self.root}), or remove the row",
            )
        if not label:
            return None, Problem.of_file(path, f"no label on {line}", "fill in the label, or remove the row")
        if self.declared_classes and label not in self.declared_classes:
            return None, Problem.of_file(
                path,
                f"unknown label {label!r} on {line}; data.classes is {self.declared_classes}",
                "correct the label, or add it to data.classes",
            )
        if split_col and split not in SPLITS:
            return None, Problem.of_file(
                path,
                f"split {split!r} on {line} is not one of {', '.join(SPLITS)}",
                f"write train, val or test in the {split_col!r} column",
            )
        patient = (row.get(patient_col) or "").strip() if patient_col else ""
        return Item(path, label, patient=patient or None, split=split), None
