"""Evaluation resize: `bicubic` against Pillow's BICUBIC (the original's resize) on decoded video frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.data_helpers import encode
from tokshift.data.decode import decode_video
from tokshift.data.sampling import crop_offsets

SOURCES = {"landscape": (256, 340), "portrait": (340, 256), "vga": (360, 480), "small": (48, 64)}  # (h, w)


def textured_frames(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """Smooth random colour fields upscaled from a coarse grid, plus fine grain that aliases when shrunk."""
    import cv2

    rng = np.random.default_rng(seed)
    out = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        coarse = rng.uniform(0, 255, (h // 16 + 2, w // 16 + 2, 3)).astype(np.float32)
        smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        grain = rng.normal(0, 25, (h, w, 1)).astype(np.float32)
        out[t] = np.clip(smooth + grain, 0, 255).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def decoded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Frames of real H.264 videos (near-lossless), decoded by ffmpeg at their own size."""
    root = tmp_path_factory.mktemp("resize")
    out = {}
    for k, (name, (h, w)) in enumerate(SOURCES.items()):
        path = encode(textured_frames(2, h, w, k), root / f"{name}.mp4", extra=["-crf", "4"])
        out[name], _fps = decode_video(path)
        assert out[name].shape == (2, h, w, 3)
    return out


def pillow_short_side(frame: np.ndarray, short: int) -> np.ndarray:
    """The original TokShift's evaluation resize: short side to ``short``, long side floored, Pillow BICUBIC."""
    img = Image.fromarray(frame)
    w, h = img.size
    size = (short, int(short * h / w)) if w < h else (int(short * w / h), short)
    return np.asarray(img.resize(size, Image.BICUBIC))


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("source", list(SOURCES))
@pytest.mark.parametrize("short", [64, 224])
def test_bicubic_matches_pillow_bicubic_on_decoded_frames(
    decoded: dict[str, np.ndarray], source: str, short: int
) -> None:
    from tokshift.data.transforms import resize_short_side

    for frame in decoded[source]:
        ref = pillow_short_side(frame, short)
        ours = resize_short_side(frame, short, "bicubic")
        assert ours.shape == ref.shape and ours.dtype == np.uint8
        assert mean_abs_diff(ours, ref) <= 1.0, (source, short, mean_abs_diff(ours, ref))


def test_linear_is_unchanged_and_differs_from_pillow_where_antialiasing_matters(decoded: dict[str, np.ndarray]) -> None:
    import cv2

    from tokshift.data.transforms import resize_short_side

    frame = decoded["vga"][0]
    linear = resize_short_side(frame, 64)
    assert np.array_equal(linear, cv2.resize(frame, (85, 64), interpolation=cv2.INTER_LINEAR))
    assert np.array_equal(resize_short_side(frame, 64, "linear"), linear)
    # Shrinking 5.6x, bilinear without antialiasing keeps the grain that Pillow averages away.
    assert mean_abs_diff(linear, pillow_short_side(frame, 64)) > 2.0
    assert mean_abs_diff(resize_short_side(frame, 64, "bicubic"), pillow_short_side(frame, 64)) < 0.5


def test_a_frame_already_at_the_crop_size_is_returned_as_it_is(decoded: dict[str, np.ndarray]) -> None:
    from tokshift.data.transforms import RESIZE_METHODS, resize_short_side

    frame = decoded["landscape"][0]
    for method in RESIZE_METHODS:
        assert resize_short_side(frame, 256, method) is frame


def test_every_resize_method_of_the_config_schema_resizes(decoded: dict[str, np.ndarray]) -> None:
    from tokshift.data.transforms import RESIZE_METHODS, resize_short_side
    from tokshift.settings import default, load_schema

    schema = load_schema()["properties"]["evaluate"]["properties"]["resize"]
    assert RESIZE_METHODS == tuple(schema["enum"]) and default("evaluate", "resize") in RESIZE_METHODS
    frame = decoded["vga"][0]
    for method in RESIZE_METHODS:
        assert resize_short_side(frame, 64, method).shape == (64, 85, 3), method


def test_an_unknown_resize_is_rejected_by_name(decoded: dict[str, np.ndarray], tmp_path: Path) -> None:
    from tokshift.data.datasets import EvalViewDataset, eval_views_from_frames
    from tokshift.data.transforms import resize_short_side

    frame = decoded["small"][0]
    with pytest.raises(ValueError, match="'area'.*linear, bicubic"):
        resize_short_side(frame, 32, "area")
    with pytest.raises(ValueError, match="'cubic'.*linear, bicubic"):
        eval_views_from_frames(decoded["small"], 2, 1, 32, 1, 1, resize="cubic")
    with pytest.raises(ValueError, match="'nearest'.*linear, bicubic"):
        EvalViewDataset([tmp_path / "absent.lmdb"], 2, 1, 32, resize="nearest")


def test_bicubic_views_are_crops_of_the_pillow_resized_frames(decoded: dict[str, np.ndarray]) -> None:
    from tokshift.data.datasets import eval_views_from_frames

    frames = decoded["portrait"]
    views = eval_views_from_frames(frames, 2, 1, 64, num_clips=1, num_crops=3, resize="bicubic").numpy()
    assert views.shape == (3, 2, 3, 64, 64)
    for t in range(2):
        ref = pillow_short_side(frames[t], 64)  # 85 x 64: crops run down the long side
        for k, (y, x) in enumerate(crop_offsets(ref.shape[0], ref.shape[1], 64, 3)):
            crop = ref[y : y + 64, x : x + 64].transpose(2, 0, 1)
            assert mean_abs_diff(views[k, t], crop) <= 1.0
    linear = eval_views_from_frames(frames, 2, 1, 64, num_clips=1, num_crops=3).numpy()
    assert not np.array_equal(views, linear)
