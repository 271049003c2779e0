"""Does the class order of a model's head match the dataset's? Evidence from its own predictions.

A checkpoint stores class scores by row, not by name. The original names no class in its code:
its rows follow the label lists distributed with its data, and this project names them from the
sorted class list. Another order gives the same weights with two or more rows exchanged, which
no shape check can see. Its predictions do: the videos of two swapped classes are predicted as
each other more often than as themselves. This check finds such pairs after an evaluation, so a
wrong order is named (with both classes) instead of showing up only as a lower accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: A pair is named only when each class has at least this many videos predicted as the other.
MIN_VIDEOS = 2


@dataclass(frozen=True)
class SuspectSwap:
    """Two classes whose videos are predicted as each other more often than as themselves."""

    first: str
    second: str
    first_as_second: int  # videos of `first` predicted `second`
    second_as_first: int
    first_right: int  # videos of `first` predicted `first`
    second_right: int

    def describe(self) -> str:
        return (
            f"{self.first!r} and {self.second!r}: {self.first_as_second} videos of {self.first!r} are predicted "
            f"{self.second!r} and {self.second_as_first} of {self.second!r} {self.first!r}, against "
            f"{self.first_right} and {self.second_right} right"
        )


def confusion(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> Any:
    """(true, predicted) counts, a numpy array (numpy imported here: the CLI's help stays light)."""
    import numpy as np

    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return counts


def suspect_swaps(
    labels: Sequence[int], predictions: Sequence[int], classes: Sequence[str], min_videos: int = MIN_VIDEOS
) -> list[SuspectSwap]:
    """Pairs of classes that the model confuses with each other more than it recognises them:
    the signature of two head rows in each other's place. Empty for any sound model."""
    counts = confusion(labels, predictions, len(classes))
    out = []
    for i in range(len(classes)):
        for j in range(i + 1, len(classes)):
            ij, ji = int(counts[i, j]), int(counts[j, i])
            if ij >= min_videos and ji >= min_videos and ij > counts[i, i] and ji > counts[j, j]:
                out.append(SuspectSwap(classes[i], classes[j], ij, ji, int(counts[i, i]), int(counts[j, j])))
    return out


#: Videos rank 0 scores before the early check of a checkpoint against its paper number.
EARLY_VIDEOS = 200
#: A checkpoint whose top-1 falls below this share of its paper number is flagged: with 200
#: videos the standard error of a top-1 near 77 % is about 3 points, so a right checkpoint lands
#: far above 0.8 x 77 = 62 %, while a file of another model scored as this one (another arch, another
#: frame count, another class order) usually lands far below.
EARLY_SHARE = 0.8


def early_verdict(model: str, top1: float, videos: int, paper_top1: float | None) -> tuple[bool, str]:
    """(looks wrong, the log line) for the top-1 of the first `videos` videos of `model`."""
    line = f"early check: top-1 {top1:.1f} % on the first {videos} videos"
    if paper_top1 is None:
        return False, f"{line} (no paper number for {model})"
    if top1 >= EARLY_SHARE * paper_top1:
        return False, f"{line}; the paper reports {paper_top1:.2f} % for {model}"
    return True, (
        f"{line}, far below the {paper_top1:.2f} % the paper reports for {model}: the checkpoint may be another "
        f"model's (another arch or frame count: check `released.{model}` names this model's file) or its head may "
        "follow another class order"
    )


#: How a released checkpoint's head rows may be ordered: `sorted`, the sorted class names (the
#: default: Kinetics' own label order and the original's list files); `sorted_underscored`, the
#: names sorted after spaces become `_` and parentheses go (as some frame-extraction scripts name
#: their folders; for Kinetics-400 it exchanges the two `skiing` classes).
CLASS_ORDERS = ("sorted", "sorted_underscored")


def _underscored(name: str) -> str:
    return name.replace(" ", "_").replace("(", "").replace(")", "")


def head_rows(classes: Sequence[str], order: str) -> list[int]:
    """For each class of `classes` (the dataset's order), the row that holds it in a head ordered by `order`."""
    if order not in CLASS_ORDERS:
        raise ValueError(f"class order {order!r}: expected one of {', '.join(CLASS_ORDERS)}")
    rows = sorted(classes) if order == "sorted" else sorted(classes, key=_underscored)
    where = {name: k for k, name in enumerate(rows)}
    return [where[name] for name in classes]
