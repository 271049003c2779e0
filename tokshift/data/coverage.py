"""Which classes have videos in which split.

The class list of a dataset is the union of its splits' labels, so a class with validation videos
but no training video still gets a head row: the model can never learn it, yet its videos are
scored, and every one of them lowers top-1 and top-5 without a word. A class with training
videos but no validation video is learnt but never measured. Both are computed here, once, and
named by the index, the split summary, the training log, the evaluation (``metrics.json``'s
``class_coverage``), the results table and the per-class table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokshift.errors import BadInput, InputMissing

__all__ = [
    "SHOWN",
    "ClassCoverage",
    "class_coverage",
    "classes_without_videos",
    "coverage_block",
    "evaluation_coverage",
    "name_some",
    "read_val_only",
    "split_gap_warning",
    "training_warnings",
    "videos_per_class",
]

#: Class names a log line spells out before it gives only the count of the rest.
SHOWN = 5


def name_some(names: Sequence[str], shown: int = SHOWN) -> str:
    """``'a', 'b'`` or, for many, the first `shown` and how many more (one log line for 400 classes)."""
    quoted = ", ".join(repr(n) for n in names[:shown])
    return quoted if len(names) <= shown else f"{quoted} and {len(names) - shown} more"


def _of(count: int, classes: int) -> str:
    """``1 of 4 classes has`` / ``2 of 4 classes have``."""
    return f"{count} of {classes} classes {'has' if count == 1 else 'have'}"


def videos_per_class(classes: Sequence[str], labels: Iterable[int]) -> list[int]:
    """Videos of each class (by class index), in the order of `classes`."""
    counts = [0] * len(classes)
    for label in labels:
        if not 0 <= int(label) < len(classes):
            raise ValueError(f"label index {label} is outside the {len(classes)} classes")
        counts[int(label)] += 1
    return counts


def classes_without_videos(classes: Sequence[str], labels: Iterable[int]) -> list[str]:
    """The classes (in class order) that no label of `labels` names."""
    return [c for c, n in zip(classes, videos_per_class(classes, labels)) if n == 0]


@dataclass(frozen=True)
class ClassCoverage:
    """The classes only one split has videos of, in class order."""

    classes: int
    val_only: tuple[str, ...]  # validation videos, no training video: scored, never learnt
    train_only: tuple[str, ...]  # training videos, no validation video: learnt, never measured

    @property
    def full(self) -> bool:
        return not self.val_only and not self.train_only

    def warnings(self) -> list[str]:
        """One line per kind of gap (none for full coverage)."""
        out = []
        if self.val_only:
            out.append(
                f"{_of(len(self.val_only), self.classes)} validation videos but no training video: "
                f"{name_some(self.val_only)}; the model cannot learn them, so each of their validation videos "
                "counts as an error in top-1 and top-5 (metrics.json's class_coverage gives the accuracy over "
                "the trained classes); add training videos for them or leave them out of the validation split"
            )
        if self.train_only:
            out.append(
                f"{_of(len(self.train_only), self.classes)} training videos but no validation video: "
                f"{name_some(self.train_only)}; their accuracy is not measured"
            )
        return out


def class_coverage(classes: Sequence[str], train_counts: Sequence[int], val_counts: Sequence[int]) -> ClassCoverage:
    """Coverage from the videos per class of each split (`videos_per_class`, in the order of `classes`)."""
    if not len(train_counts) == len(val_counts) == len(classes):
        raise ValueError(
            f"{len(train_counts)} training and {len(val_counts)} validation counts for {len(classes)} classes"
        )
    return ClassCoverage(
        classes=len(classes),
        val_only=tuple(c for c, t, v in zip(classes, train_counts, val_counts) if v and not t),
        train_only=tuple(c for c, t, v in zip(classes, train_counts, val_counts) if t and not v),
    )


def split_gap_warning(split: str, without: Sequence[str], classes: int, where: str) -> str | None:
    """The warning for the classes one split (`where`: its index or shards) has no video of, when the
    other split is not at hand; None when it has videos of every class."""
    if not without:
        return None
    head = f"{_of(len(without), classes)} no {'training' if split == 'train' else 'validation'} video"
    why = (
        "the model cannot learn them, so any validation video of theirs counts as an error"
        if split == "train"
        else "their accuracy is not measured"
    )
    return f"{head} in {where}: {name_some(without)}; {why}"


def coverage_block(
    coverage: ClassCoverage, classes: Sequence[str], labels: Sequence[int], top5: Sequence[Sequence[int]]
) -> dict[str, Any]:
    """metrics.json's ``class_coverage``: the one-split classes, and top-1/top-5 over the videos of
    classes that had training videos (`labels` and `top5` of the evaluated videos, class indices)."""
    position = {c: i for i, c in enumerate(classes)}
    untrained = {position[c] for c in coverage.val_only}
    kept = [(label, top) for label, top in zip(labels, top5) if label not in untrained]

    def share(hits: list[bool]) -> float | None:
        return 100.0 * sum(hits) / len(hits) if hits else None

    return {
        "val_only": list(coverage.val_only),
        "train_only": list(coverage.train_only),
        "videos_trained_classes": len(kept),
        "top1_trained_classes": share([bool(top) and top[0] == label for label, top in kept]),
        "top5_trained_classes": share([label in top for label, top in kept]),
    }


def training_warnings(
    classes: Sequence[str], train_counts: Sequence[int], val_counts: Sequence[int] | None
) -> list[str]:
    """What the training log warns about its classes: the one-split classes, or without validation shards
    the classes it has no training video of."""
    if val_counts is not None:
        return class_coverage(classes, train_counts, val_counts).warnings()
    without = [c for c, n in zip(classes, train_counts) if not n]
    line = split_gap_warning("train", without, len(classes), "the training shards")
    return [line] if line else []


def evaluation_coverage(
    meta: Mapping[str, Any], classes: Sequence[str], val_labels: Iterable[int]
) -> ClassCoverage | None:
    """Coverage of an evaluation: the training videos per class its checkpoint records (``train_class_videos``,
    written by `tokshift train`) against the validation labels; None for a checkpoint that records none."""
    train_counts = meta.get("train_class_videos")
    if train_counts is None:
        return None
    if len(train_counts) != len(classes):
        raise BadInput(
            f"the checkpoint records training videos for {len(train_counts)} classes but has {len(classes)}: "
            "its file is damaged or was edited; train or export the model again"
        )
    return class_coverage(classes, [int(n) for n in train_counts], videos_per_class(classes, val_labels))


def read_val_only(metrics: str | os.PathLike[str]) -> list[str] | None:
    """The val-only classes an evaluation's metrics.json names; None when it cannot tell (no ``class_coverage``)."""
    path = Path(metrics)
    if not path.is_file():
        raise InputMissing(f"metrics file {path} does not exist; run `tokshift evaluate` first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadInput(f"{path} is not JSON ({err}); give the metrics.json of `tokshift evaluate`") from None
    block = data.get("class_coverage") if isinstance(data, dict) else None
    if block is None:
        return None
    if not isinstance(block, dict) or not isinstance(block.get("val_only"), list):
        raise BadInput(f"{path}: class_coverage lacks its val_only list; rerun `tokshift evaluate`")
    return [str(c) for c in block["val_only"]]
