"""Sources made of image files (class folders, CSV manifests): list the files, inspect them (in parallel,
cached), check the data set (data.on_bad), split it when it comes unsplit (by patient and by content, so
that no patient and no image is in two splits), and keep small data sets decoded in RAM (data.cache)."""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from lightning.pytorch.utilities import rank_zero_only

from medtransfer.data.datamodule import MedicalImageDataModule, Split, SplitData
from medtransfer.data.files.decode import resolve_window
from medtransfer.data.files.decoded import decode_files
from medtransfer.data.files.inspection import FileFacts, Inspection, few_levels_message, inspect_files
from medtransfer.data.files.validation import (
    ON_BAD,
    Problem,
    conflicting_label_problems,
    duplicate_problems,
    enforce,
    file_problems,
    left_out,
    missing_class_problems,
    patient_problems,
    single_class_problems,
)
from medtransfer.data.items import Item
from medtransfer.data.splits import (
    SPLITS,
    connected_groups,
    grouped_folds,
    grouped_split,
    iterative_grouped_folds,
    iterative_grouped_split,
)
from medtransfer.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CACHE_MODES = ("auto", "ram", "none")


@dataclass
class Listing:
    """What a source found: its items, its classes in label order, whether the items came with their
    split, and the problems seen while listing (missing files, unknown labels, empty class folders)."""

    items: list[Item]
    classes: list[str]  # multi-label: the labels, in the order of Item.targets
    split_given: bool
    problems: list[Problem] = field(default_factory=list)
    multilabel: bool = False


def _without(items: list[Item], problems: list[Problem]) -> list[Item]:
    out = left_out(problems)
    return [i for i in items if i.path not in out]


@rank_zero_only
def _report_skipped(count: int) -> None:
    log.warning(
        "data.on_bad=skip: left out %d file(s) with problems; skipped.csv in the run dir lists each with reason and fix.",
        count,
    )


@rank_zero_only
def _warn_few_levels(facts: dict[str, FileFacts], window: Sequence[float] | None) -> None:
    message = few_levels_message(facts, window)
    if message:
        log.warning(message)


def _groups(items: list[Item], facts: dict[str, FileFacts]) -> np.ndarray:
    """A group per item: the images of one patient, and copies of one image (content hash), together."""
    return connected_groups([i.patient for i in items], [facts[i.path].sha1 for i in items])


def _strata(items: list[Item]) -> tuple[np.ndarray, bool]:
    """What splits and folds are stratified by, and whether it is multi-label: the label vectors (N, L),
    unknown as NaN, or the labels (N,)."""
    if items and items[0].targets is not None:
        targets = np.array([i.targets for i in items], dtype=float)
        return np.where(targets < 0, np.nan, targets), True
    return np.array([i.label for i in items]), False


class ImageFilesDataModule(MedicalImageDataModule):
    """on_bad: "error" (stop, listing every problem) or "skip" (leave those files out).
    cache: "ram" keeps every decoded image in memory, "none" decodes on every read, "auto" is "ram" when
    the decoded images take less than cache_limit_gb.
    cache_dir: where inspection results are kept between runs (None: not kept).
    window: [centre, width] in the files' units (e.g. Hounsfield units) for every grayscale image with more
    than 8 bits (16-bit, signed, DICOM after rescale); None: see `decode`. dicom_window: its former name.
    folds, fold: k-fold cross-validation (docs/cross_validation.md): every image outside the test split is
    given one of `folds` folds (stratified, grouped by patient and by content, seeded by data.seed only);
    fold `fold` is the val split, the others train (the test split is the one made without folds). None: no folds."""

    def __init__(
        self,
        on_bad: str = "error",
        cache: str = "auto",
        cache_limit_gb: float = 2.0,
        cache_dir: str | None = None,
        window: Sequence[float] | None = None,
        dicom_window: Sequence[float] | None = None,
        folds: int | None = None,
        fold: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.folds, self.fold = check_folds(folds, fold)
        self.fold_of: dict[str, int] = {}  # path -> fold, for folds.csv (test images are not in it)
        if on_bad not in ON_BAD:
            raise ConfigError(f"data.on_bad={on_bad!r}: use one of {', '.join(ON_BAD)}.")
        self.on_bad = on_bad
        if cache not in CACHE_MODES:
            raise ConfigError(f"data.cache={cache!r}: use one of {', '.join(CACHE_MODES)}.")
        self.cache = cache
        self.cache_limit_gb = float(cache_limit_gb)
        self.cache_dir = Path(cache_dir).expanduser().resolve() if cache_dir else None
        self.window = resolve_window(window, dicom_window)
        self.inspection: Inspection | None = None

    @abstractmethod
    def list_items(self) -> Listing:
        """Every file of the data set, with its class (and patient and split, when the source gives them)."""

    @abstractmethod
    def locate(self, split: str, cls: str | None = None) -> str:
        """Where the images of a split (of a class) are given, for messages: a folder, or the manifest."""

    def decode_options(self) -> dict:
        return {"window": self.window} if self.window is not None else {}

    # ------------------------------------------------------------ loading
    def load_splits(self) -> SplitData:
        listing = self.list_items()
        self.inspection = inspect_files([i.path for i in listing.items], self.cache_dir, window=self.window)
        facts = self.inspection.facts
        problems = listing.problems + file_problems(listing.items, facts)
        items = _without(listing.items, problems)
        conflicts = conflicting_label_problems(items, facts)
        problems += conflicts
        items = _without(items, conflicts)
        _warn_few_levels({i.path: facts[i.path] for i in items}, self.window)
        multilabel = listing.multilabel
        kept_whole = self.evaluating and self.whole and not listing.split_given
        if listing.split_given and not self.evaluating:
            # multi-label splits may lack a rare label: a warning (datamodule), not a problem
            missing = [] if multilabel else missing_class_problems(items, listing.classes, self.locate)
            given = missing + duplicate_problems(items, facts) + patient_problems(items)
            problems += given
            items = _without(items, given)
        elif kept_whole:  # evaluated whole: no split is made (for_evaluation)
            items = [replace(i, split="all") for i in items]
        elif not listing.split_given:
            items = self.assign_splits(items, facts)
        if self.folds and not kept_whole:
            items = self.assign_folds(items, facts)
        if multilabel:  # every label is an output, also one without positives (warned about in setup)
            present = [c for k, c in enumerate(listing.classes) if any(i.targets[k] == 1 for i in items)]
        else:
            present = [c for c in listing.classes if any(i.label == c for i in items)]
            if not self.evaluating:  # evaluation takes any subset of the trained classes
                problems += single_class_problems(
                    items, present, self.locate, made_split=not listing.split_given
                )
        skipped = enforce(problems, self.on_bad)
        if skipped:
            _report_skipped(len(left_out(skipped)))
        if self.evaluating and not items:
            raise DataError(f"No usable image in {self.describe_source()}: nothing to evaluate.")
        if not self.evaluating and multilabel and not present:
            raise DataError(
                f"{self.locate('train')}: no usable image has any of the labels {', '.join(listing.classes)}; "
                "a multi-label classifier needs positives."
            )
        if not self.evaluating and not multilabel and len(present) < 2:
            raise DataError(
                f"{self.locate('train')}: {len(present)} class(es) with usable images ({', '.join(present) or 'none'}); "
                "a classifier needs at least 2."
            )
        classes = listing.classes if multilabel else present
        made_split = not listing.split_given and not kept_whole
        return self.split_data(items, classes, facts, made_split, skipped=skipped, multilabel=multilabel)

    def assign_splits(self, items: list[Item], facts: dict[str, FileFacts]) -> list[Item]:
        """Stratified by class (multi-label: by the label vectors, iterative stratification); the images of
        one patient, and copies of one image, go to one split."""
        # with folds the val split made here joins train in the folds: the test split is the one a run without
        # folds makes from the same seed, so a fold ensemble and a single split are tested on the same images
        strata, multilabel = _strata(items)
        split = iterative_grouped_split if multilabel else grouped_split
        assignment = split(strata, _groups(items, facts), self.val_fraction, self.test_fraction, self.seed)
        return [replace(i, split=s) for i, s in zip(items, assignment, strict=True)]

    def assign_folds(self, items: list[Item], facts: dict[str, FileFacts]) -> list[Item]:
        """Every image outside the test split gets a fold (stratified by class or label vector, every
        patient and every copy of an image in one fold); fold data.fold becomes val, the others train.
        The test split stays as it was made or given."""
        pool = [i for i in items if i.split != "test"]
        strata, multilabel = _strata(pool)
        make_folds = iterative_grouped_folds if multilabel else grouped_folds
        folds = make_folds(strata, _groups(pool, facts), self.folds, self.seed)
        self.fold_of = {i.path: int(f) for i, f in zip(pool, folds, strict=True)}
        return [
            i
            if i.split == "test"
            else replace(i, split="val" if self.fold_of[i.path] == self.fold else "train")
            for i in items
        ]

    def write_folds_csv(self, path: str | Path) -> bool:
        """folds.csv: path, label, fold (0 … folds-1, or test), patient when known; every image of the data
        set, in a fixed order (by path). Returns whether it wrote (only with data.folds)."""
        self.setup()
        if not self.folds:
            return False
        self.write_image_table(
            path, "fold", lambda split, name: "test" if split == "test" else self.fold_of[name], by_path=True
        )
        return True

    def split_data(
        self,
        items: list[Item],
        classes: list[str],
        facts: dict[str, FileFacts],
        made_split: bool,
        skipped: list[Problem],
        multilabel: bool = False,
    ) -> SplitData:
        index = {c: k for k, c in enumerate(classes)}
        with_patients = any(i.patient for i in items)
        splits = {}
        for s in [s for s in (*SPLITS, "all") if any(i.split == s for i in items)]:  # "all": kept whole
            part = [i for i in items if i.split == s]
            if multilabel:  # (N, L), unknown as NaN
                labels = _strata(part)[0].astype(np.float32)
            else:
                labels = np.array([index[i.label] for i in part], dtype=np.int64)
            splits[s] = Split(
                labels=labels,
                paths=[i.path for i in part],
                patients=[i.patient for i in part] if with_patients else None,
            )
        used = [facts[i.path] for i in items]
        channels = self.model_channels or (1 if all(f.gray for f in used) else 3)
        heights, widths = [f.height for f in used], [f.width for f in used]
        self.cache_in_ram(splits, used, channels)
        return SplitData(
            classes=classes,
            splits=splits,
            channels=channels,
            made_split=made_split,
            sizes={"height": [min(heights), max(heights)], "width": [min(widths), max(widths)]},
            modes=dict(sorted(Counter(f.mode for f in used).items())),
            skipped=skipped,
            multilabel=multilabel,
        )

    def cache_in_ram(self, splits: dict[str, Split], facts: list[FileFacts], channels: int) -> None:
        """Decode every image once, now, into `Split.images`, when data.cache says so; the loaders then
        serve them from memory and no epoch reads a file again. The next job of a sweep that reads the same
        files, unchanged, reuses them (files/decoded.py)."""
        nbytes = sum(f.height * f.width * channels for f in facts)
        if self.cache == "none":
            return
        if self.cache == "auto" and nbytes > self.cache_limit_gb * 2**30:
            log.info(
                "data.cache=auto: the decoded images would take %.1f GiB (> data.cache_limit_gb=%s); reading files every epoch.",
                nbytes / 2**30,
                self.cache_limit_gb,
            )
            return
        paths = [p for part in splits.values() for p in part.paths]
        images, reused = decode_files(paths, channels, self.decode_options(), self.inspection.fingerprint)
        for part in splits.values():
            part.images = [images[p] for p in part.paths]
        log.info(
            "%s %d images into RAM (%.0f MiB, data.cache=%s).",
            "Reused the previous job's" if reused else "Decoded",
            len(facts),
            nbytes / 2**20,
            self.cache,
        )


def check_folds(folds, fold) -> tuple[int | None, int]:
    """(folds, fold) as ints; ConfigError naming the value for a fold count below 2 or a fold outside
    0 … folds-1."""
    if folds in (None, "null"):
        return None, int(fold or 0)
    try:
        folds, fold = int(folds), int(fold)
    except (TypeError, ValueError):
        raise ConfigError(
            f"data.folds={folds!r} data.fold={fold!r}: both must be whole numbers, e.g. data.folds=5 data.fold=0."
        ) from None
    if folds < 2:
        raise ConfigError(
            f"data.folds={folds}: cross-validation needs at least 2 folds; use data.folds=5 (or null for "
            "one train/val/test split)."
        )
    if not 0 <= fold < folds:
        raise ConfigError(
            f"data.fold={fold}: not a fold of data.folds={folds}; use 0 … {folds - 1} (hparams_search=kfold "
            "runs them all)."
        )
    return folds, fold
