"""The checks a data set passes before training, and the policy for what fails them.

Every check returns problems, each naming the file (or folder, or manifest), the reason and the fix.
data.on_bad=error raises one DataError listing all of them; data.on_bad=skip leaves the files out and
records them (skipped.csv in the run dir). Problems that leaving files out cannot solve (a split with a
single class) raise in both cases."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from medtransfer.data.files.inspection import FileFacts
from medtransfer.data.files.listing import shown_path
from medtransfer.data.items import Item
from medtransfer.data.splits import SPLITS
from medtransfer.utils.errors import DataError

ON_BAD = ("error", "skip")


@dataclass(frozen=True)
class Problem:
    file: str
    reason: str
    fix: str
    leave_out: tuple[str, ...] = ()  # the files on_bad=skip leaves out for this problem
    skippable: bool = True

    @classmethod
    def of_file(cls, path: str, reason: str, fix: str) -> Problem:
        return cls(path, reason, fix, leave_out=(path,))

    def __str__(self) -> str:
        return f"{shown_path(self.file)}: {self.reason}\n    fix: {self.fix}"


def file_problems(items: Iterable[Item], facts: Mapping[str, FileFacts]) -> list[Problem]:
    """Files that are not images, or cannot be read or decoded in full."""
    return [
        Problem.of_file(i.path, facts[i.path].reason, facts[i.path].fix)
        for i in items
        if not facts[i.path].ok
    ]


def missing_class_problems(
    items: list[Item], classes: list[str], locate: Callable[[str, str], str]
) -> list[Problem]:
    """Given splits whose class sets differ: a class with images in some splits but none in others. Skipping
    leaves out that class's images everywhere. `locate(split, cls)` names where they should be."""
    counts = Counter((i.split, i.label) for i in items)
    problems = []
    for cls in classes:
        present = {s: counts[(s, cls)] for s in SPLITS if counts[(s, cls)]}
        if not present or len(present) == len(SPLITS):
            continue
        files = tuple(i.path for i in items if i.label == cls)
        have = ", ".join(f"{s} has {n}" for s, n in present.items())
        for split in SPLITS:
            if split not in present:
                problems.append(
                    Problem(
                        locate(split, cls),
                        f"no images of class {cls!r} in the {split} split ({have}); every split needs the same classes",
                        f"add {cls!r} images to the {split} split, or remove the class from every split",
                        leave_out=files,
                    )
                )
    return problems


def duplicate_problems(items: list[Item], facts: Mapping[str, FileFacts]) -> list[Problem]:
    """The same image (content hash) in two splits: evaluation would see a training image. The copy in the
    first split (train, val, test) stays; the others are the problem."""
    return _crossing(
        items,
        key=lambda i: facts[i.path].sha1,
        what=lambda i, first: f"the same image (content hash) as {shown_path(first.path)} in {first.split}",
        fix="remove one of the copies (an image in two splits leaks the answer into evaluation)",
    )


def conflicting_label_problems(items: list[Item], facts: Mapping[str, FileFacts]) -> list[Problem]:
    """The same image (content hash) with two different labels: in two class folders, or on two manifest
    rows. Which label is right cannot be told, so every copy is a problem (skip leaves them all out)."""
    by_hash: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        if facts[item.path].sha1:
            by_hash[facts[item.path].sha1].append(item)
    problems = []
    for group in by_hash.values():
        labels = sorted({i.label for i in group})
        if len(labels) < 2:
            continue
        for item in group:
            others = [o for o in group if o.label != item.label]
            where = ", ".join(f"{o.label!r} at {shown_path(o.path)}" for o in others[:3])
            problems.append(
                Problem.of_file(
                    item.path,
                    f"the same image (content hash) is labelled {item.label!r} here and {where}",
                    "keep the image under its one correct label and remove the other copies",
                )
            )
    return problems


def patient_problems(items: list[Item]) -> list[Problem]:
    """A patient's images in two given splits."""
    return _crossing(
        items,
        key=lambda i: i.patient,
        what=lambda i, first: f"patient {i.patient!r} is also in {first.split} ({shown_path(first.path)})",
        fix="put all images of a patient in one split",
    )


def _crossing(
    items: list[Item], key: Callable[[Item], str | None], what: Callable[[Item, Item], str], fix: str
) -> list[Problem]:
    by_key: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        if key(item):
            by_key[key(item)].append(item)
    problems = []
    for group in by_key.values():
        group = sorted(group, key=lambda i: SPLITS.index(i.split))
        first = group[0]
        problems += [Problem.of_file(i.path, what(i, first), fix) for i in group if i.split != first.split]
    return problems


def single_class_problems(
    items: list[Item], classes: list[str], locate: Callable[[str], str], made_split: bool
) -> list[Problem]:
    """A split holding one class only (AUROC and balanced accuracy are undefined on it). Leaving files out
    cannot fix this."""
    if len(classes) < 2:
        return []
    problems = []
    for split in SPLITS:
        labels = Counter(i.label for i in items if i.split == split)
        if len(labels) == 1:
            (cls, n), others = next(iter(labels.items())), [c for c in classes if c not in labels]
            fix = (
                f"add images of {', '.join(map(repr, others))}, or raise data.{split}_fraction (the split is made here)"
                if made_split and split != "train"
                else f"add images of {', '.join(map(repr, others))} to the {split} split"
            )
            problems.append(
                Problem(
                    locate(split),
                    f"the {split} split holds one class only ({cls!r}, {n} images)",
                    fix,
                    skippable=False,
                )
            )
    return problems


def enforce(problems: list[Problem], on_bad: str) -> list[Problem]:
    """Raise one DataError listing the problems that stop the run; return the problems skipped."""
    stopping = problems if on_bad == "error" else [p for p in problems if not p.skippable]
    if stopping:
        head = (
            f"The data has {len(stopping)} problem(s) (data.on_bad=error); fix them, or run with data.on_bad=skip "
            "to leave the files out:"
            if on_bad == "error"
            else f"The data has {len(stopping)} problem(s) that leaving files out (data.on_bad=skip) cannot solve:"
        )
        raise DataError("\n".join([head, *(f"  {p}" for p in stopping)]))
    return problems


def left_out(problems: Iterable[Problem]) -> set[str]:
    return {path for p in problems for path in p.leave_out}
