"""Assigning items to train/val/test: stratified by label, and by group when items belong together (the
images of one patient, copies of one image), so that no group is divided between two splits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medtransfer.utils.errors import DataError

SPLITS = ("train", "val", "test")


def _too_small(label, count: int, unit: str, val_fraction: float, test_fraction: float) -> DataError:
    needed = 1 + (val_fraction > 0) + (test_fraction > 0)
    label = label.item() if isinstance(label, np.generic) else label
    return DataError(
        f"Class {label!r} has {count} {unit}: too few to put one into each of train"
        f"{', val' if val_fraction > 0 else ''}{' and test' if test_fraction > 0 else ''} "
        f"(data.val_fraction={val_fraction}, data.test_fraction={test_fraction}); a split without the class "
        f"cannot measure it. Add images of {label!r} (at least {needed} {unit}), leave the class out, or give "
        "the split yourself (train/ val/ test/ folders, or a split column in the manifest)."
    )


def class_split_sizes(count: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(n_val, n_test) for a class of `count` items: the fractions rounded, but at least one item in every
    split whose fraction is above 0 and at least one left for train. Raises ValueError when `count` is too
    small for that (fewer than 1 + the number of non-zero fractions)."""
    n_test = round(test_fraction * count)
    n_val = round(val_fraction * count)
    if test_fraction > 0:
        n_test = max(n_test, 1)
    if val_fraction > 0:
        n_val = max(n_val, 1)
    while count - n_val - n_test < 1 and max(n_val, n_test) > 1:
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    if count - n_val - n_test < 1:
        raise ValueError(f"{count} items cannot fill train, val and test")
    return n_val, n_test


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """A split name per item: each class divided in the same proportions, shuffled by `seed`, with at least
    one item of every class in train and in each split whose fraction is above 0.

    Raises DataError naming the class when a class has too few items for that (fewer than 3 with both
    fractions above 0)."""
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), dtype=object)
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        try:
            n_val, n_test = class_split_sizes(len(idx), val_fraction, test_fraction)
        except ValueError:
            raise _too_small(cls, len(idx), "images", val_fraction, test_fraction) from None
        assignment[idx[:n_test]] = "test"
        assignment[idx[n_test : n_test + n_val]] = "val"
        assignment[idx[n_test + n_val :]] = "train"
    return assignment


def connected_groups(*keys: Sequence[str | None]) -> np.ndarray:
    """A group number per item: items that share a value of any key (a patient id, a content hash) are in
    one group, transitively. None or "" shares nothing."""
    n = len(keys[0])
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for key in keys:
        first: dict[str, int] = {}
        for i, value in enumerate(key):
            if value is None or value == "":
                continue
            if value in first:
                parent[root(i)] = root(first[value])
            else:
                first[value] = i
    return np.unique([root(i) for i in range(n)], return_inverse=True)[1]


def grouped_split(
    labels: np.ndarray, groups: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """A split name per item such that every group lies in one split, each class divided as closely to
    the fractions as the groups allow.

    Groups are placed largest first (in seeded random order among equal sizes), each into the split that
    lacks most of the group's classes, relative to the targets (fraction × class count). When every group
    is a single item this is exactly `stratified_split`, so a data set without shared groups keeps the
    split it had before groups were taken into account."""
    counts, inverse, class_ids = _group_class_counts(labels, groups)
    if len(counts) == len(inverse):
        return stratified_split(np.asarray(labels), val_fraction, test_fraction, seed)
    fractions = np.array([1.0 - val_fraction - test_fraction, val_fraction, test_fraction])
    split_of_group = _greedy_groups(counts, fractions, seed)
    _every_class_everywhere(
        counts,
        split_of_group,
        fractions,
        lambda c, n: _too_small(
            class_ids[c], n, "patients (groups of images that stay together)", val_fraction, test_fraction
        ),
    )
    return np.array(SPLITS, dtype=object)[split_of_group[inverse]]


def _group_class_counts(labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items per group and class (G, C), group index per item (N,), the class values (C,))."""
    group_ids, inverse = np.unique(np.asarray(groups), return_inverse=True)
    class_ids, label_idx = np.unique(np.asarray(labels), return_inverse=True)
    counts = np.zeros((len(group_ids), len(class_ids)))
    np.add.at(counts, (inverse, label_idx), 1)
    return counts, inverse, class_ids


def _every_class_everywhere(
    counts: np.ndarray, split_of_group: np.ndarray, fractions: np.ndarray, too_small
) -> None:
    """Move whole groups (in place in `split_of_group`) until every class is in every split (or fold) with
    a fraction above 0: for a split lacking a class, the smallest group holding the class is taken from a
    split that keeps at least one group of every class it gives up. `too_small(class index, groups
    holding it)` is the DataError raised for a class in too few groups."""
    n_splits = len(fractions)
    wanted = [s for s in range(n_splits) if fractions[s] > 0]
    for c in range(counts.shape[1]):
        holders = np.flatnonzero(counts[:, c] > 0)
        if len(holders) < len(wanted):
            raise too_small(c, len(holders))
    for s in wanted:
        for c in range(counts.shape[1]):
            placed = np.array([counts[split_of_group == t].sum(0) for t in range(n_splits)])
            if placed[s, c] > 0:
                continue
            candidates = [
                g
                for g in np.flatnonzero(counts[:, c] > 0)
                if split_of_group[g] != s
                and np.all((placed[split_of_group[g]] - counts[g])[counts[g] > 0] > 0)
            ]
            if not candidates:
                raise too_small(c, int((counts[:, c] > 0).sum()))
            g = min(candidates, key=lambda g: counts[g].sum())
            split_of_group[g] = s


def _greedy_groups(counts: np.ndarray, fractions: np.ndarray, seed: int) -> np.ndarray:
    """A split (fold) index per group: groups (rows of `counts`, (G, C) items per class) placed largest
    first, in seeded random order among equal sizes, each into the split whose relative deficit in the
    group's classes is largest (targets: fraction × class count)."""
    totals = counts.sum(0)
    targets = np.outer(fractions, totals)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(counts))
    order = order[np.argsort(-counts[order].sum(1), kind="stable")]
    placed = np.zeros_like(targets)
    split_of_group = np.zeros(len(counts), dtype=int)
    for g in order:
        # the squared distance to the targets (each class weighted by 1/its count) grows least for the
        # split whose relative deficit in this group's classes is largest
        surplus = ((placed - targets) / totals) @ counts[g]
        s = int(np.argmin(np.where(fractions > 0, surplus, np.inf)))
        split_of_group[g] = s
        placed[s] += counts[g]
    return split_of_group


def _too_few_for_folds(label, count: int, folds: int) -> DataError:
    label = label.item() if isinstance(label, np.generic) else label
    return DataError(
        f"Class {label!r} has {count} patient(s) (groups of images that stay together) outside the test "
        f"split: too few to put one into each of data.folds={folds} folds; a validation fold without the "
        f"class cannot measure it. Use data.folds={max(2, count)} or fewer, or add images of {label!r}."
    )


def grouped_folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold number (0 … folds-1) per item, (N,) int: every group (patient, copies of one image) in one
    fold, each class divided as evenly over the folds as the groups allow, and every class in every fold.

    Stratified group k-fold (as scikit-learn's StratifiedGroupKFold, with the greedy placement of
    `grouped_split`): groups largest first, each into the fold lacking most of its classes. With one item
    per group every class's count per fold is within one of count / folds. Seeded by `seed` only, so
    every fold job of a cross-validation gets the same assignment. Raises DataError for a class held by
    fewer groups than folds."""
    counts, inverse, class_ids = _group_class_counts(labels, groups)
    fractions = np.full(folds, 1.0 / folds)
    fold_of_group = _greedy_groups(counts, fractions, seed)
    _every_class_everywhere(
        counts, fold_of_group, fractions, lambda c, n: _too_few_for_folds(class_ids[c], n, folds)
    )
    return fold_of_group[inverse]


def iterative_grouped_split(
    targets: np.ndarray, groups: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """A split name per item for multi-label targets (N, L) (1 positive, 0 negative, NaN unknown), every
    group in one split, each label's positives divided as closely to the fractions as the groups allow.

    Iterative stratification (Sechidis, Tsoumakas and Vlahavas, ECML PKDD 2011, Algorithm 1) with groups
    in place of items: while positives remain, take the label with the fewest positives left (the rarest
    is placed first, while every split still wants it) and put each group holding it into the split that
    lacks most of that label relative to its share (ties: the split that wants most items, then seeded
    chance); groups without any positive fill the splits by item count, largest first. Sechidis et al.
    rank by the absolute number wanted, which gives the first three groups of a rare label all to train;
    the relative lack gives train, val and test one group each first, so a label held by three or more
    groups reaches every split. `iterative-stratification` (PyPI) does this
    for items only, not for groups of items, hence this version."""
    fractions = np.array([1.0 - val_fraction - test_fraction, val_fraction, test_fraction])
    split_of_group, inverse = _iterative_groups(targets, groups, fractions, seed)
    return np.array(SPLITS, dtype=object)[split_of_group[inverse]]


def iterative_grouped_folds(targets: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold number (0 … folds-1) per item for multi-label targets (N, L) (1, 0, NaN unknown): every
    group in one fold, each label's positives divided as evenly as the groups allow (the iterative
    stratification of `iterative_grouped_split` with `folds` equal shares). (N,) int."""
    fold_of_group, inverse = _iterative_groups(targets, groups, np.full(folds, 1.0 / folds), seed)
    return fold_of_group[inverse]


def _iterative_groups(
    targets: np.ndarray, groups: np.ndarray, fractions: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(split index per group, group index per item): see `iterative_grouped_split`."""
    positive = np.nan_to_num(np.asarray(targets, dtype=float), nan=0.0) > 0.5
    group_ids, inverse = np.unique(np.asarray(groups), return_inverse=True)
    counts = np.zeros((len(group_ids), positive.shape[1]))
    np.add.at(counts, inverse, positive)
    sizes = np.bincount(inverse, minlength=len(group_ids)).astype(float)
    usable = fractions > 0
    shares = np.outer(fractions, counts.sum(0))  # (3, L): each split's share of each label's positives
    wanted_labels = shares.copy()  # what each split still lacks
    wanted_items = fractions * len(positive)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(group_ids))  # seeded order among equals
    split_of_group = np.full(len(group_ids), -1)

    def place(g: int, label: int | None) -> None:
        noise = rng.random(len(fractions))
        lack = None if label is None else wanted_labels[:, label] / np.maximum(shares[:, label], 1e-9)
        keys = [noise, wanted_items] if label is None else [noise, wanted_items, lack]
        ranked = np.lexsort([np.where(usable, k, -np.inf) for k in keys])  # last key first
        s = int(ranked[-1])
        split_of_group[g] = s
        wanted_labels[s] -= counts[g]
        wanted_items[s] -= sizes[g]

    while True:
        left = (split_of_group < 0)[:, None] * counts
        remaining = left.sum(0)
        if not remaining.any():
            break
        label = int(np.argmin(np.where(remaining > 0, remaining, np.inf)))
        for g in order[left[order, label] > 0]:
            place(int(g), label)
    rest = order[split_of_group[order] < 0]
    for g in rest[np.argsort(-sizes[rest], kind="stable")]:
        place(int(g), None)
    return split_of_group, inverse
