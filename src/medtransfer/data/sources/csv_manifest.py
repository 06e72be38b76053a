"""`data=csv`: a manifest, one row per image: its path (relative to data.root) and label, optionally its
patient and its split. With a split column the split is used as it is; without one, the images are split
here, stratified by label, with all images of a patient in one split.

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
from pathlib import Path

from medtransfer.data.files.validation import Problem
from medtransfer.data.items import Item
from medtransfer.data.sources.image_files import ImageFilesDataModule, Listing
from medtransfer.data.splits import SPLITS
from medtransfer.utils.errors import ConfigError, DataError

DEFAULT_COLUMNS = {"path": "path", "label": "label", "patient": "patient_id", "split": "split"}
DELIMITERS = (",", ";", "\t", "|")
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
        label_col = self._column("label", header)
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
