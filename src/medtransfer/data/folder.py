"""`data=folder`: one folder per class, either pre-split (train/ val/ test/, each holding class folders)
or a single tree that is split here, stratified by class and seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medtransfer.data.datamodule import SPLITS, MedicalImageDataModule, Split, SplitData, stratified_split
from medtransfer.data.decode import GRAYSCALE_MODES, image_mode, is_image_file
from medtransfer.errors import DataError


def _class_files(folder: Path) -> dict[str, list[str]]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {
        c: sorted(str(f) for f in (folder / c).rglob("*") if f.is_file() and is_image_file(f))
        for c in classes
    }


class FolderDataModule(MedicalImageDataModule):
    def __init__(self, root: str, **kwargs):
        super().__init__(**kwargs)
        self.root = Path(root).expanduser().resolve()

    def describe_source(self) -> dict:
        return {"type": "folder", "root": str(self.root)}

    def load_splits(self) -> SplitData:
        if not self.root.is_dir():
            raise DataError(
                f"data.root={self.root}: no such folder. Point it at a folder with one sub-folder per class."
            )
        presplit = all((self.root / s).is_dir() for s in SPLITS)
        if presplit:
            per_split = {s: _class_files(self.root / s) for s in SPLITS}
            classes = sorted(set().union(*per_split.values()))
            for s in SPLITS:
                missing = set(classes) - set(per_split[s])
                if missing:
                    raise DataError(
                        f"{self.root / s}: class folders {sorted(missing)} are missing; every split needs the same classes."
                    )
        else:
            files = _class_files(self.root)
            classes = sorted(c for c in files if files[c])
            if len(classes) < 2:
                raise DataError(
                    f"data.root={self.root}: found {len(classes)} class folder(s) with images; "
                    "expected one sub-folder per class (or train/ val/ test/ folders holding them)."
                )
        index = {c: i for i, c in enumerate(classes)}
        if presplit:
            splits = {}
            for s in SPLITS:
                paths = [p for c in classes for p in per_split[s][c]]
                labels = np.array([index[c] for c in classes for _ in per_split[s][c]], dtype=np.int64)
                splits[s] = Split(labels=labels, paths=paths)
        else:
            paths = [p for c in classes for p in files[c]]
            labels = np.array([index[c] for c in classes for _ in files[c]], dtype=np.int64)
            assignment = stratified_split(labels, self.val_fraction, self.test_fraction, self.seed)
            splits = {
                s: Split(
                    labels=labels[assignment == s],
                    paths=[p for p, a in zip(paths, assignment, strict=True) if a == s],
                )
                for s in SPLITS
            }
        all_paths = [p for s in splits.values() for p in s.paths]
        channels = 1 if all(image_mode(p) in GRAYSCALE_MODES for p in all_paths) else 3
        return SplitData(classes=classes, splits=splits, channels=channels, made_split=not presplit)
