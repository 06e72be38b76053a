"""`data=folder`: one folder per class, either pre-split (train/ val/ test/, each holding class folders)
or a single tree that is split here, stratified by class and seeded (copies of one image stay together)."""

from __future__ import annotations

from pathlib import Path

from medtransfer.data.files.listing import is_considered, walk_files
from medtransfer.data.files.validation import Problem
from medtransfer.data.items import Item
from medtransfer.data.sources.image_files import ImageFilesDataModule, Listing
from medtransfer.data.splits import SPLITS
from medtransfer.utils.errors import DataError


def _class_files(folder: Path, problems: list[Problem]) -> dict[str, list[str]]:
    """Class folder name -> its files (any type: non-images are reported by validation, not ignored).
    Archive and system debris (`__MACOSX/`, `._*`, hidden files, see `files.listing`) is not data;
    symlinked folders are followed; folders that cannot be read are added to `problems`."""
    classes = sorted(p.name for p in folder.iterdir() if is_considered(p.name) and p.is_dir())
    files = {}
    for c in classes:
        walk = walk_files(folder / c)
        files[c] = walk.files
        problems += [
            Problem(path, f"unreadable folder: {why}", "give read permission on it, or remove it")
            for path, why in walk.unreadable
        ]
    return files


def _empty_folder(folder: Path, cls: str) -> Problem:
    return Problem(
        str(folder),
        "empty class folder: no files in it",
        f"put the {cls!r} images into it, or delete the folder",
    )


class FolderDataModule(ImageFilesDataModule):
    def __init__(self, root: str, **kwargs):
        super().__init__(**kwargs)
        self.root = Path(root).expanduser().resolve()

    def describe_source(self) -> dict:
        return {"type": "folder", "root": str(self.root)}

    @property
    def presplit(self) -> bool:
        return all((self.root / s).is_dir() for s in SPLITS)

    def locate(self, split: str, cls: str | None = None) -> str:
        if self.presplit:
            return str(self.root / split / cls) if cls else str(self.root / split)
        return str(self.root / cls) if cls else f"{self.root} (the {split} split made by medtransfer)"

    def list_items(self) -> Listing:
        if not self.root.is_dir():
            raise DataError(
                f"data.root={self.root}: no such folder. Point it at a folder with one sub-folder per class."
            )
        unreadable: list[Problem] = []
        if self.presplit:
            per_split = {s: _class_files(self.root / s, unreadable) for s in SPLITS}
            classes = sorted({c for files in per_split.values() for c, paths in files.items() if paths})
            items = [Item(p, c, split=s) for s in SPLITS for c in classes for p in per_split[s].get(c, [])]
            # an empty folder of a class that has images elsewhere is reported as a missing class
            empty = [
                _empty_folder(self.root / s / c, c)
                for s in SPLITS
                for c, paths in per_split[s].items()
                if not paths and c not in classes
            ]
        else:
            files = _class_files(self.root, unreadable)
            classes = [c for c in files if files[c]]
            items = [Item(p, c) for c in classes for p in files[c]]
            empty = [_empty_folder(self.root / c, c) for c, paths in files.items() if not paths]
        if self.evaluating:  # an empty class folder is a class without images: evaluated on the others
            empty = []
        if len(classes) < (1 if self.evaluating else 2):  # a model is evaluated on any of its classes
            raise DataError(
                f"data.root={self.root}: found {len(classes)} class folder(s) with files; "
                "expected one sub-folder per class (or train/ val/ test/ folders holding them)."
            )
        return Listing(items=items, classes=classes, split_given=self.presplit, problems=empty + unreadable)
