"""What a file source lists: one item per image file, with its class and, when known, its patient and split."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    path: str
    label: (
        str  # the class name; multi-label: the labels as text (what messages show; equal labels, equal text)
    )
    patient: str | None = None
    split: str | None = (
        None  # given by the source (pre-split folders, a split column); None: medtransfer splits
    )
    # multi-label sources: 1 / 0 / -1 (unknown) per label, in the listing's label order
    targets: tuple[int, ...] | None = None
