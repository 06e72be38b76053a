"""`data=medmnist`: MedMNIST .npz files (keys train_images, train_labels, val_*, test_*), from a local
path, or downloaded from the official release with its MD5 checksum. Labels (N, 1) are class indices;
labels (N, L) with L > 1 are multi-label (ChestMNIST: 14 findings, 0/1; -1 is read as unknown)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medtransfer.data.datamodule import SPLITS, MedicalImageDataModule, Split, SplitData
from medtransfer.utils.errors import ConfigError, DataError

ZENODO = "https://zenodo.org/records/10519652/files"
# name -> (class names, {size: md5}); files are {name}.npz at 28 px and {name}_{size}.npz otherwise.
MEDMNIST = {
    "pneumoniamnist": (
        ["normal", "pneumonia"],
        {
            28: "28209eda62fecd6e6a2d98b1501bb15f",
            64: "8f4eceb4ccffa70c672198ea285246c6",
            128: "05b46931834c231683c68f40c47b2971",
            224: "d6a3c71de1b945ea11211b03746c1fe1",
        },
    ),
}


# label names of the multi-label sets (MedMNIST v2 INFO; ChestMNIST keeps NIH ChestX-ray14's order)
LABEL_NAMES = {
    "chestmnist": [
        "atelectasis",
        "cardiomegaly",
        "effusion",
        "infiltration",
        "mass",
        "nodule",
        "pneumonia",
        "pneumothorax",
        "consolidation",
        "edema",
        "emphysema",
        "fibrosis",
        "pleural",
        "hernia",
    ],
}


def medmnist_filename(name: str, size: int) -> str:
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def name_from_filename(path: Path) -> str | None:
    """The MedMNIST set a file's name gives (`pneumoniamnist.npz`, `pneumoniamnist_224.npz`), or None."""
    match = re.fullmatch(r"([a-z0-9]+mnist)(?:_(\d+))?", path.stem.lower())
    return match.group(1) if match else None


def download_medmnist(name: str, size: int, root: Path) -> Path:
    """Download the official file into `root` (checked against its MD5), unless it is already there."""
    from torchvision.datasets.utils import check_integrity, download_url

    if name not in MEDMNIST:
        raise DataError(
            f"data.name={name!r}: unknown MedMNIST set; known: {sorted(MEDMNIST)}. Or give data.path=FILE.npz."
        )
    md5s = MEDMNIST[name][1]
    if size not in md5s:
        raise DataError(f"data.size={size}: {name} exists at sizes {sorted(md5s)}.")
    filename = medmnist_filename(name, size)
    target = root / filename
    if check_integrity(str(target), md5s[size]):
        return target
    url = f"{ZENODO}/{filename}?download=1"
    try:
        download_url(url, str(root), filename=filename, md5=md5s[size])
    except Exception as err:  # no network, proxy, checksum mismatch
        raise DataError(
            f"Cannot download {name} ({size} px) from {url}: {err.__class__.__name__}: {err}\n"
            f"  Put {filename} into {root}/ and run again, or give a local file: data.path=/path/to/{filename}"
        ) from None
    return target


class MedMNISTDataModule(MedicalImageDataModule):
    """path: a local .npz (used as it is, any checksum; the set's name from the file's name when `name`
    is not given, its size from its images). Otherwise name + size: the official file in
    `download_dir`, downloaded when missing. class_names: optional names for the integer labels (for
    multi-label files: of the label columns; data.name=chestmnist names them too). image_size: null
    trains at the file's own image size."""

    def __init__(
        self,
        path: str | None = None,
        name: str | None = None,
        size: int = 28,
        download_dir: str = "data/medmnist",
        class_names: list[str] | None = None,
        folds: int | None = None,
        fold: int = 0,
        image_size: int | None = 224,
        **kwargs,
    ):
        if folds:
            raise ConfigError(
                f"data.folds={folds}: cross-validation folds are made for data=folder and data=csv only; "
                "a MedMNIST .npz keeps its official train/val/test split. Drop data.folds (and "
                "hparams_search=kfold), or export the images to a folder tree."
            )
        self.native_image_size = image_size is None
        super().__init__(image_size=size if image_size is None else image_size, **kwargs)
        self.path = Path(path).expanduser().resolve() if path else None
        self.name = name or (name_from_filename(self.path) if self.path else None)
        self.size = size
        self.download_dir = Path(download_dir).expanduser().resolve()
        self.class_names = list(class_names) if class_names else None

    def describe_source(self) -> dict:
        return {
            "type": "medmnist",
            "path": str(self.path) if self.path else None,
            "name": self.name,
            "size": self.size,
        }

    def prepare_data(self) -> None:
        self._file()

    def _file(self) -> Path:
        """data.path, or the official file of data.name, downloaded when missing."""
        if self.path is not None:
            if not self.path.is_file():
                raise DataError(
                    f"data.path={self.path}: no such file. Give a MedMNIST-style .npz file, or leave "
                    "data.path out to download the official one by data.name and data.size."
                )
            return self.path
        if not self.name:
            raise DataError(
                "data=medmnist needs data.path=FILE.npz or data.name=<medmnist set> (e.g. pneumoniamnist)."
            )
        self.download_dir.mkdir(parents=True, exist_ok=True)
        return download_medmnist(self.name, self.size, self.download_dir)

    def load_splits(self) -> SplitData:
        file = self._file()
        with np.load(file) as npz:
            needed = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
            missing = [k for k in needed if k not in npz.files]
            if missing:
                raise DataError(f"{file}: keys {missing} are missing; a MedMNIST .npz has {needed}.")
            raw = {}
            for s in SPLITS:
                images = npz[f"{s}_images"]
                if images.dtype != np.uint8:
                    raise DataError(f"{file}: {s}_images is {images.dtype}; expected uint8 images.")
                raw[s] = (images, npz[f"{s}_labels"].reshape(len(images), -1))
        widths = {labels.shape[1] for _, labels in raw.values()}
        if len(widths) > 1:
            raise DataError(
                f"{file}: the label arrays have different numbers of columns ({sorted(widths)}) across splits; "
                "every split needs the same labels."
            )
        multilabel = widths.pop() > 1
        splits = {}
        for s, (images, labels) in raw.items():
            labels = multilabel_targets(file, s, labels) if multilabel else labels[:, 0].astype(np.int64)
            splits[s] = Split(labels=labels, images=images)
        if multilabel:
            num_classes = splits["train"].labels.shape[1]
            names = self.class_names or LABEL_NAMES.get(self.name)
        else:
            num_classes = int(max(s.labels.max() for s in splits.values())) + 1
            names = self.class_names or (MEDMNIST[self.name][0] if self.name in MEDMNIST else None)
        classes = names or [str(i) for i in range(num_classes)]
        if multilabel and len(classes) != num_classes:
            raise DataError(
                f"data.class_names has {len(classes)} names but {file} has {num_classes} label columns; "
                "give one name per column, in column order."
            )
        if len(classes) < num_classes:
            raise DataError(
                f"data.class_names has {len(classes)} names but {file} has labels up to {num_classes - 1}."
            )
        images = splits["train"].images
        channels = 1 if images.ndim == 3 or images.shape[-1] == 1 else images.shape[-1]
        h, w = images.shape[1:3]
        self.size = int(h)
        if self.native_image_size:
            self.image_size = int(h)
        return SplitData(
            classes=list(classes),
            splits=splits,
            channels=channels,
            sizes={"height": [h, h], "width": [w, w]},
            multilabel=multilabel,
        )


def multilabel_targets(file: Path, split: str, labels: np.ndarray) -> np.ndarray:
    """(N, L) float32 targets of a multi-label array: 1 and 0 as they are, -1 (and NaN) unknown (NaN);
    any other value is a DataError."""
    values = labels.astype(np.float32)
    unknown = np.isnan(values) | (values == -1)
    bad = ~unknown & (values != 0) & (values != 1)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"{file}: {split}_labels[{row}, {col}] is {labels[row, col]!r}; a multi-label array holds 1 "
            "(positive), 0 (negative) or -1 (unknown) per label."
        )
    return np.where(unknown, np.nan, values).astype(np.float32)
