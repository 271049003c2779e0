"""Which frames and which crops a clip uses.

The rules of docs/reference.md, "Training input" and "Evaluation input and score fusion":
training takes ``T`` frames ``stride`` apart from a random start in
``[0, max(n - T*stride + 1, 1) - 1)``, wrapping modulo ``n`` for short videos. Evaluation takes
``num_clips`` starts ``int(i*n/num_clips)`` clipped to the last valid start ``max(n - T*stride, 0)``
(one clip: the centre one), and ``num_crops`` crops spread along the long side.

`faithful=True` reproduces the original's test transform instead where it differs: clip starts
clipped to ``max(n - T*stride + 1, 1)``, and on portrait frames every crop the centre crop
(docs/reference.md, "Faithful evaluation").
"""

from __future__ import annotations

import numpy as np

__all__ = ["crop_offsets", "eval_clip_indices", "eval_clip_starts", "train_clip_indices"]


def _check(n: int, num_frames: int, stride: int) -> None:
    if n < 1:
        raise ValueError(f"a video needs at least one frame to sample from, got n={n}")
    if num_frames < 1 or stride < 1:
        raise ValueError(f"num_frames and stride must be >= 1, got {num_frames} and {stride}")


def train_clip_indices(n: int, num_frames: int, stride: int, rng: np.random.Generator) -> np.ndarray:
    """Frame indices of one random training clip (dense sampling, wrap-around for short videos)."""
    _check(n, num_frames, stride)
    upper = max(n - num_frames * stride + 1, 1) - 1
    start = int(rng.integers(0, upper)) if upper > 0 else 0
    return (start + np.arange(num_frames, dtype=np.int64) * stride) % n


def eval_clip_starts(n: int, num_frames: int, stride: int, num_clips: int, faithful: bool = False) -> list[int]:
    """Start frames of the evaluation clips, spread uniformly over the video."""
    _check(n, num_frames, stride)
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    last = max(n - num_frames * stride + 1, 1) if faithful else max(n - num_frames * stride, 0)
    if num_clips == 1:
        return [last // 2]
    return [min(i * n // num_clips, last) for i in range(num_clips)]


def eval_clip_indices(n: int, num_frames: int, stride: int, num_clips: int, faithful: bool = False) -> list[np.ndarray]:
    """Frame indices of every evaluation clip (one array of ``num_frames`` per clip)."""
    steps = np.arange(num_frames, dtype=np.int64) * stride
    return [(s + steps) % n for s in eval_clip_starts(n, num_frames, stride, num_clips, faithful)]


def crop_offsets(h: int, w: int, crop: int, num_crops: int, faithful: bool = False) -> list[tuple[int, int]]:
    """Top-left ``(y, x)`` of ``num_crops`` square crops along the long side, centred across it.

    Ordered left/top, centre, right/bottom; one crop is the centre crop. Landscape and square
    frames are cropped along the width, portrait frames along the height, except with
    `faithful`: the original crops portrait frames along the width only, so its crops of a
    portrait frame are all the centre crop.
    """
    if crop > h or crop > w:
        raise ValueError(f"crop {crop} does not fit in a {h}x{w} frame")
    if num_crops < 1:
        raise ValueError(f"num_crops must be >= 1, got {num_crops}")
    across_w = w >= h or faithful
    span = (w if across_w else h) - crop
    other = ((h if across_w else w) - crop) // 2
    if num_crops == 1:
        along = [span // 2]
    else:
        along = [i * span // (num_crops - 1) for i in range(num_crops)]
    return [(other, a) if across_w else (a, other) for a in along]
