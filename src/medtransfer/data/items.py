"""What a file source lists: one item per image file, with its class and, when known, its patient and split."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    path: str
    label: str  # the class name
    patient: str | None = None
    split: str | None = (
        None  # given by the source (pre-split folders, a split column); None: medtransfer splits
    )
