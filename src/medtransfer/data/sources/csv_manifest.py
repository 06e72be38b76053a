"""`data=csv`: a manifest, one row per image: its path (relative to data.root) and label, optionally its
patient and its split. With a split column the split is used as it is; without one, the images are split
here, stratified by label, with all images of a patient in one split.

Multi-label manifests (several findings per image, as NIH ChestX-ray14 and CheXpert publish them) come
in two forms: one label column whose cells join the labels with data.label_sep (`Atelectasis|Effusion`;
data.negative_label, e.g. `No Finding`, means none), or one column per label, data.columns.labels, holding
1 (positive), 0 (negative), or blank / NaN / -1 (unknown: see data.missing_label). A label cell holding a
separator-like character while the task is single-label is refused: it would silently train a class per
combination of labels.

Manifests are read as spreadsheets save them: UTF-8 with or without BOM, UTF-16 with BOM (Excel's
"Unicode text"), else Windows-1252 (Excel's "CSV" on Windows, with a warning); the delimiter is the one of
`,` `;` tab `|` that finds the path column in the header (csv.Sniffer's guess otherwise)."""

from __future__ import annotations

import codecs
import csv
import io
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from medtransfer.data.files.validation import Problem
from medtransfer.data.items import Item
from medtransfer.data.sources.image_files import ImageFilesDataModule, Listing
from medtransfer.data.splits import SPLITS
from medtransfer.utils.errors import ConfigError, DataError

DEFAULT_COLUMNS = {
    "path": "path",
    "label": "label",
    "patient": "patient_id",
    "split": "split",
    "labels": None,  # multi-label: one 0/1 column per label (a list of column names)
}
DELIMITERS = (",", ";", "\t", "|")
# characters that join several labels in one cell (a single-label manifest must not hold them)
SEPARATOR_LIKE = ("|", ";")
SAVE_AS_UTF8 = (
    "save it as UTF-8 (Excel: Save As > 'CSV UTF-8'; LibreOffice: character set UTF-8), "
    "or convert it: iconv -f <its encoding> -t utf-8 FILE > FILE.utf8.csv"
)

log = logging.getLogger(__name__)


def _line_of(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def read_text(path: Path) -> tuple[str, str]:
    """The manifest's text and the encoding it was read with: UTF-16 when it starts with a UTF-16 BOM,
    else UTF-8 (a BOM is dropped), else Windows-1252 (logged). Raises DataError naming the file, the line
    of the first byte that fits neither, and the fix."""
    raw = path.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as err:
            raise DataError(
                f"{path}: starts as UTF-16 text but is not UTF-16 further on ({err.reason}); {SAVE_AS_UTF8}."
            ) from None
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as utf8_err:
        first_bad = utf8_err.start
    try:
        text = raw.decode("cp1252")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: line {_line_of(raw, err.start)} holds byte 0x{raw[err.start]:02x}, which is neither UTF-8 "
            f"nor Windows-1252 text (the manifest was saved in another encoding); {SAVE_AS_UTF8}."
        ) from None
    log.warning(
        "%s is not UTF-8 (line %d, byte 0x%02x): read as Windows-1252 (cp1252), as Excel on Windows saves CSV. "
        "If its labels or paths look wrong, %s.",
        path,
        _line_of(raw, first_bad),
        raw[first_bad],
        SAVE_AS_UTF8,
    )
    return text, "cp1252"


def detect_delimiter(text: str, path_column: str | None) -> str:
    """The delimiter (one of DELIMITERS) that makes `path_column` one of the header's columns; when none
    does, csv.Sniffer's guess from the first lines, else a comma."""
    lines = text.splitlines()
    first = lines[0] if lines else ""
    for delimiter in DELIMITERS:
        header = next(csv.reader([first], delimiter=delimiter), [])
        if path_column in [h.strip() for h in header]:
            return delimiter
    try:
        return csv.Sniffer().sniff("\n".join(lines[:20]), delimiters="".join(DELIMITERS)).delimiter
    except csv.Error:
        return ","


class CsvDataModule(ImageFilesDataModule):
    """manifest: the CSV file. root: the folder its paths are relative to (None: the manifest's folder).
    columns: names of the path, label, patient and split columns (see DEFAULT_COLUMNS); an optional column
    under its default name may be absent, one named otherwise must exist, None switches it off.
    classes: the labels in label order; a row with another label is a problem. None: the sorted labels found.
    label_sep: multi-label: the string joining the labels in the label column (e.g. "|"); None: one label
    per cell. negative_label: with label_sep, the cell text meaning no label at all (e.g. "No Finding").
    columns["labels"]: multi-label: one column per label instead (values 1, 0, blank / NaN / -1 unknown)."""

    def __init__(
        self,
        manifest: str,
        root: str | None = None,
        columns: Mapping[str, str | None] | None = None,
        classes: Sequence[str] | None = None,
        label_sep: str | None = None,
        negative_label: str | None = None,
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
        if self.columns["labels"] is not None:
            self.columns["labels"] = [str(c) for c in self.columns["labels"]]
        self.declared_classes = [str(c) for c in classes] if classes else None
        self.label_sep = str(label_sep) if label_sep else None
        self.negative_label = str(negative_label) if negative_label else None
        self._check_label_options()
        self._split_given: bool | None = None

    @property
    def label_mode(self) -> str:
        """single (one class per cell) | joined (labels joined by data.label_sep) | columns (a column per label)."""
        if self.columns["labels"]:
            return "columns"
        return "joined" if self.label_sep else "single"

    def _check_label_options(self) -> None:
        if self.columns["labels"] is not None and not self.columns["labels"]:
            raise ConfigError("data.columns.labels=[]: name the label columns, or set it to null.")
        if self.columns["labels"] and self.label_sep:
            raise ConfigError(
                "data.columns.labels and data.label_sep both set: use data.columns.labels for one 0/1 column "
                "per label, or data.label_sep for labels joined in data.columns.label; set the other to null."
            )
        if self.columns["labels"] and self.declared_classes:
            raise ConfigError(
                "data.classes is set with data.columns.labels, which already names the labels in order; "
                "set data.classes=null."
            )
        if self.label_mode != "single" and self.requested_task in ("binary", "multiclass"):
            how = "data.label_sep" if self.label_sep else "data.columns.labels"
            raise ConfigError(
                f"data.task={self.requested_task} with {how} (several labels per image): set "
                f"data.task=multilabel (or auto), or {how}=null for one class per image."
            )

    def describe_source(self) -> dict:
        return {
            "type": "csv",
            "manifest": str(self.manifest),
            "root": str(self.root),
            "columns": self.columns,
            **(
                {"label_sep": self.label_sep, "negative_label": self.negative_label} if self.label_sep else {}
            ),
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
        if len(header) <= 1:
            raise DataError(
                f"{self.manifest} line 1: the header {header[0] if header else ''!r} reads as a single column with "
                f"every delimiter tried ({', '.join(map(repr, DELIMITERS))}), so there is no column {name!r} "
                f"(data.columns.{key}). Separate the columns with one of these, or set data.columns.{key} "
                f"to the name of the column that holds the {key}s."
            )
        raise DataError(
            f"{self.manifest}: no column {name!r} (data.columns.{key}); its columns are {', '.join(header)}. "
            f"Set data.columns.{key} to the column that holds the {key}s."
        )

    def list_items(self) -> Listing:
        if not self.manifest.is_file():
            raise DataError(
                f"data.manifest={self.manifest}: no such file. Give a CSV with one row per image."
            )
        text, _ = read_text(self.manifest)
        delimiter = detect_delimiter(text, self.columns["path"])
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        path_col = self._column("path", header)
        label_col = self._label_columns(header)
        patient_col = self._column("patient", header)
        split_col = self._column("split", header)
        self._split_given = split_col is not None
        rows, problems = [], []
        for row in reader:
            line = f"{self.manifest.name} line {reader.line_num}"
            item, problem = self._item(row, line, path_col, label_col, patient_col, split_col)
            rows += [(item, line)] if item else []
            problems += [problem] if problem else []
        items, repeated = self._once_each(rows)
        problems += repeated
        if self.label_mode == "columns":
            classes = self.columns["labels"]
        elif self.label_mode == "joined":
            classes = self.declared_classes or sorted({t for i in items for t in self._tokens(i.label)})
            index = {c: k for k, c in enumerate(classes)}
            items = [replace(i, targets=self._joined_targets(i.label, index)) for i in items]
        else:
            self._refuse_joined_labels(items, rows, label_col)
            classes = self.declared_classes or sorted({i.label for i in items})
        return Listing(
            items=items,
            classes=classes,
            split_given=self._split_given,
            problems=problems,
            multilabel=self.label_mode != "single",
        )

    def _label_columns(self, header: list[str]) -> str | list[str]:
        """The label column, or (data.columns.labels) the list of label columns."""
        if self.label_mode != "columns":
            return self._column("label", header)
        missing = [c for c in self.columns["labels"] if c not in header]
        if missing:
            raise DataError(
                f"{self.manifest}: no column(s) {', '.join(map(repr, missing))} (data.columns.labels); its "
                f"columns are {', '.join(header)}. List the columns that hold one label each."
            )
        return self.columns["labels"]

    def _tokens(self, cell: str) -> list[str]:
        """The labels of a joined cell (none for data.negative_label)."""
        if self.negative_label is not None and cell == self.negative_label:
            return []
        return [t.strip() for t in cell.split(self.label_sep) if t.strip()]

    def _joined_targets(self, cell: str, index: dict[str, int]) -> tuple[int, ...]:
        targets = [0] * len(index)
        for token in self._tokens(cell):
            targets[index[token]] = 1
        return tuple(targets)

    def _refuse_joined_labels(self, items: list[Item], rows: list[tuple[Item, str]], label_col: str) -> None:
        """A single-label task on cells like `Atelectasis|Effusion` would train one class per combination:
        a DataError naming the file, a cell and the fix."""
        for item, line in rows:
            found = next((ch for ch in SEPARATOR_LIKE if ch in item.label), None)
            if found:
                combined = len({i.label for i in items if found in i.label})
                raise DataError(
                    f"{self.manifest}: the {label_col!r} column joins several labels with {found!r} "
                    f"(e.g. {item.label!r} on {line}; {combined} such label text(s)), but the task is "
                    "single-label, which would train one class per combination of labels. For multi-label "
                    f'data set data.label_sep="{found}" (and data.negative_label for the text meaning no '
                    'label, e.g. "No Finding"); if every cell really is one class, rename those classes '
                    f"without {found!r}."
                )

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
        path = os.path.normpath(os.path.join(self.root, cell))  # an absolute cell stays as it is
        root = str(self.root)
        if (
            os.path.commonpath([path, root]) != root
            and os.path.commonpath([os.path.realpath(path), root]) != root
        ):
            return None, Problem.of_file(
                path,
                f"the path {cell!r} on {line} leads outside data.root={self.root}",
                "list the images by their path below data.root, or set data.root to a folder that holds "
                "every image of the manifest",
            )
        split = (row.get(split_col) or "").strip().lower() if split_col else None
        if not Path(path).is_file():
            return None, Problem.of_file(
                path,
                f"missing file, listed on {line}",
                f"correct the path (relative to data.root={self.root}), or remove the row",
            )
        targets = None
        if self.label_mode == "columns":
            label, targets, problem = self._label_values(row, line, label_col, path)
            if problem:
                return None, problem
        else:
            label = (row.get(label_col) or "").strip()
            if not label:
                return None, Problem.of_file(
                    path, f"no label on {line}", "fill in the label, or remove the row"
                )
            if self.label_mode == "joined":
                label, problem = self._joined_label(label, line, path)
                if problem:
                    return None, problem
            elif self.declared_classes and label not in self.declared_classes:
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
        return Item(path, label, patient=patient or None, split=split, targets=targets), None

    def _joined_label(self, cell: str, line: str, path: str) -> tuple[str, Problem | None]:
        """The cell's labels as one text (sorted, so that `Effusion|Atelectasis` and `Atelectasis|Effusion`
        are the same), or a problem: the negative label among others, a label not in data.classes."""
        tokens = self._tokens(cell)
        if self.negative_label is not None and self.negative_label in tokens:
            return cell, Problem.of_file(
                path,
                f"{cell!r} on {line} joins {self.negative_label!r} (data.negative_label: no label) with labels",
                f"write either {self.negative_label!r} or the labels",
            )
        unknown = [t for t in tokens if self.declared_classes and t not in self.declared_classes]
        if unknown:
            return cell, Problem.of_file(
                path,
                f"unknown label(s) {', '.join(map(repr, unknown))} on {line}; data.classes is {self.declared_classes}",
                "correct the label, or add it to data.classes",
            )
        return self.label_sep.join(sorted(set(tokens))) if tokens else (self.negative_label or ""), None

    def _label_values(
        self, row: dict, line: str, columns: list[str], path: str
    ) -> tuple[str, tuple[int, ...] | None, Problem | None]:
        """(label text, targets 1 / 0 / -1 unknown, None) of a row with a column per label, or a problem
        for a value that is none of 1, 0, -1, blank, NaN."""
        targets = []
        for column in columns:
            cell = (row.get(column) or "").strip()
            try:
                value = float(cell) if cell else -1.0
            except ValueError:
                value = None
            if value is not None and value != value:  # NaN
                value = -1.0
            if value not in (1.0, 0.0, -1.0):
                problem = Problem.of_file(
                    path,
                    f"{cell!r} in column {column!r} on {line} is not a label value",
                    "write 1 (positive), 0 (negative), or -1 / blank (unknown)",
                )
                return "", None, problem
            targets.append(int(value))
        text = "|".join(("?" if t < 0 else "") + c for c, t in zip(columns, targets, strict=True) if t != 0)
        return text, tuple(targets), None

    def _once_each(self, rows: list[tuple[Item, str]]) -> tuple[list[Item], list[Problem]]:
        """Rows listing the same image: identical repeats are kept once (logged); rows that disagree
        (another label, split or patient) are a problem naming the lines, and the image is left out."""
        by_path: dict[str, list[tuple[Item, str]]] = {}
        for item, line in rows:
            by_path.setdefault(item.path, []).append((item, line))
        items, problems, repeats = [], [], 0
        for path, listed in by_path.items():
            variants = {item for item, _ in listed}
            if len(variants) == 1:
                items.append(listed[0][0])
                repeats += len(listed) - 1
                continue
            lines = "; ".join(
                f"{line}: label {item.label!r}"
                + (f", split {item.split!r}" if item.split else "")
                + (f", patient {item.patient!r}" if item.patient else "")
                for item, line in listed
            )
            problems.append(
                Problem.of_file(
                    path,
                    f"listed on several rows that disagree ({lines})",
                    "keep one row per image, with its one correct label (and split, patient)",
                )
            )
        if repeats:
            log.warning(
                "%s: %d row(s) repeat an earlier row exactly; each image is used once.",
                self.manifest,
                repeats,
            )
        return items, problems
