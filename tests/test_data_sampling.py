"""Sampling indices and crop positions against a direct transcription of docs/reference.md's formulas.

("Training input" and "Evaluation input and score fusion".)
"""

from __future__ import annotations

import numpy as np
import pytest

from tokshift.data.sampling import crop_offsets, eval_clip_indices, eval_clip_starts, train_clip_indices


def ref_train(n: int, T: int, stride: int, rng: np.random.Generator) -> list[int]:
    # "random start in [0, max(n - T*stride + 1, 1) - 1), indices wrapped modulo n"
    upper = max(n - T * stride + 1, 1) - 1
    start = rng.integers(0, upper) if upper > 0 else 0
    return [(start + k * stride) % n for k in range(T)]


def ref_eval(n: int, T: int, stride: int, clips: int) -> list[list[int]]:
    # "start_i = int(i*n/10), clipped to the last valid start"; one clip: the centre one
    last = max(n - T * stride, 0)
    starts = [last // 2] if clips == 1 else [min(int(i * n / clips), last) for i in range(clips)]
    return [[(s + k * stride) % n for k in range(T)] for s in starts]


CASES = [
    (1, 8, 32),
    (5, 8, 32),
    (255, 8, 32),
    (256, 8, 32),
    (257, 8, 32),
    (258, 8, 32),
    (300, 8, 32),
    (24, 8, 2),
    (16, 8, 2),
    (17, 8, 2),
    (10, 16, 32),
    (7, 1, 1),
    (1000, 12, 32),
    (3, 4, 1),
]


@pytest.mark.parametrize("n,T,stride", CASES)
def test_train_indices_match_reference(n: int, T: int, stride: int) -> None:
    for seed in range(20):
        got = train_clip_indices(n, T, stride, np.random.default_rng(seed))
        assert got.tolist() == ref_train(n, T, stride, np.random.default_rng(seed))
        assert got.min() >= 0 and got.max() < n


def test_train_start_range_is_half_open() -> None:
    n, T, s = 40, 8, 4  # upper = max(40-32+1,1)-1 = 8: starts 0..7, never 8
    starts = {int(train_clip_indices(n, T, s, np.random.default_rng(i))[0]) for i in range(400)}
    assert starts == set(range(8))


@pytest.mark.parametrize("n,T,stride", CASES)
@pytest.mark.parametrize("clips", [1, 3, 10])
def test_eval_indices_match_reference(n: int, T: int, stride: int, clips: int) -> None:
    got = [c.tolist() for c in eval_clip_indices(n, T, stride, clips)]
    assert got == ref_eval(n, T, stride, clips)
    assert eval_clip_starts(n, T, stride, clips) == [c[0] for c in ref_eval(n, T, stride, clips)]


def test_eval_starts_short_video_all_zero_and_wrapped() -> None:
    assert eval_clip_starts(100, 8, 32, 10) == [0] * 10
    assert eval_clip_indices(5, 4, 2, 1)[0].tolist() == [0, 2, 4, 1]


def test_eval_starts_spread_uniformly() -> None:
    assert eval_clip_starts(1000, 8, 32, 10) == [0, 100, 200, 300, 400, 500, 600, 700, 744, 744]


def test_bad_sampling_arguments() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        train_clip_indices(0, 8, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_clips"):
        eval_clip_starts(10, 2, 2, 0)


def test_crop_offsets_landscape_portrait_square() -> None:
    assert crop_offsets(224, 298, 224, 3) == [(0, 0), (0, 37), (0, 74)]
    assert crop_offsets(298, 224, 224, 3) == [(0, 0), (37, 0), (74, 0)]
    assert crop_offsets(224, 224, 224, 3) == [(0, 0)] * 3
    assert crop_offsets(230, 300, 224, 1) == [(3, 38)]  # centre = int((L - crop) / 2) as the original
    assert crop_offsets(256, 341, 256, 3)[1] == (0, int((341 - 256) / 2))
    with pytest.raises(ValueError, match="does not fit"):
        crop_offsets(100, 300, 224, 3)


def test_normalize_formula_dtype_and_range() -> None:
    import torch

    from tokshift.data.transforms import normalize

    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    y = normalize(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    expected = (torch.arange(256, dtype=torch.float64) / 255 - 0.5) / 0.5
    assert torch.allclose(y.flatten().double(), expected, atol=1e-6)
    assert y.min() == -1 and y.max() == 1
