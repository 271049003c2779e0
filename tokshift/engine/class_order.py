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

import numpy as np

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


def confusion(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """(true, predicted) counts."""
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
