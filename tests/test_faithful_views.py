"""Faithful evaluation views against an independent reimplementation of the original's test transform.

The reference below is written from the original's description (docs/reference.md, "Faithful
evaluation") with Pillow alone, as the original does it: each stored JPEG frame opened with
Pillow, resized with Image.BICUBIC to short side = crop size (long side floor(long·crop/short)),
three crops along the width (all three the centre crop on a portrait frame), ten clip starts
int(i·n/10) clipped to max(n − T·s + 1, 1), frame indices modulo n. Our views come from a real
LMDB shard through EvalViewDataset(faithful=True).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tokshift.data.datasets import EvalViewDataset
from tokshift.data.jpeg import decode_rgb, encode_rgb
from tokshift.data.store import ShardWriter

CROP, T, STRIDE, CLIPS, CROPS = 32, 4, 3, 10, 3
#: video id -> (frames, height, width): landscape, portrait (taller than wide), and shorter than a clip.
VIDEOS = {"landscape": (40, 48, 80), "portrait": (30, 72, 40), "short": (7, 40, 56), "square": (20, 37, 37)}


def natural_frames(n: int, h: int, w: int, seed: int) -> list[np.ndarray]:
    """Smooth colour gradients with texture and moving edges: what JPEG's fast paths round differently."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for t in range(n):
        base = np.stack([xx * 3 + t * 5, yy * 2 + 40, (xx + yy) * 1.5 + t * 3], axis=-1)
        edge = ((xx + 2 * t) % 17 < 8)[..., None] * 60
        noise = rng.normal(0, 12, (h, w, 3))
        out.append(np.clip(base + edge + noise, 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[bytes]]]:
    path = tmp_path_factory.mktemp("faithful") / "shard-0.lmdb"
    jpegs = {}
    with ShardWriter(path, ["a"]) as writer:
        for k, (vid, (n, h, w)) in enumerate(VIDEOS.items()):
            jpegs[vid] = [encode_rgb(f, 90) for f in natural_frames(n, h, w, seed=k)]
            meta = {"label": "a", "label_index": 0, "fps": 25.0, "width": w, "height": h}
            writer.add_video(vid, jpegs[vid], meta)
        writer.finish()
    return path, jpegs


def original_views(jpegs: list[bytes]) -> np.ndarray:
    """(clips·crops, T, 3, crop, crop) uint8 as the original's test transform makes them, with Pillow."""
    n = len(jpegs)
    last = max(n - T * STRIDE + 1, 1)
    starts = [min(int(i * n / CLIPS), last) for i in range(CLIPS)]
    views = []
    for start in starts:
        frames = [Image.open(io.BytesIO(jpegs[(start + k * STRIDE) % n])).convert("RGB") for k in range(T)]
        per_crop: list[list[np.ndarray]] = [[] for _ in range(CROPS)]
        for img in frames:
            w, h = img.size
            size = (w * CROP // h, CROP) if w >= h else (CROP, h * CROP // w)
            img = img.resize(size, Image.BICUBIC)
            w, h = img.size
            y = (h - CROP) // 2
            for c, x in enumerate((0, (w - CROP) // 2, w - CROP)):  # along the width only
                per_crop[c].append(np.asarray(img.crop((x, y, x + CROP, y + CROP))).transpose(2, 0, 1))
        views += [np.stack(frames_of_crop) for frames_of_crop in per_crop]
    return np.stack(views)


@pytest.mark.parametrize("vid", list(VIDEOS))
def test_faithful_views_equal_the_originals(shard, vid: str) -> None:
    path, jpegs = shard
    ds = EvalViewDataset([path], T, STRIDE, CROP, CLIPS, CROPS, resize="bicubic", faithful=True)
    ours = ds[ds.video_ids.index(vid)]["views"].numpy()
    theirs = original_views(jpegs[vid])
    assert ours.shape == theirs.shape == (CLIPS * CROPS, T, 3, CROP, CROP)
    diff = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
    # The bicubic resize is OpenCV's with Pillow's antialiasing support, not Pillow's own code: its
    # rounding may differ by one grey level on a few pixels; everything else is exact.
    assert diff.max() <= 1, (vid, int(diff.max()))
    assert (diff == 0).mean() > 0.99, (vid, float((diff == 0).mean()))
    if VIDEOS[vid][1] > VIDEOS[vid][2]:  # portrait: the three crops of a clip are one centre crop
        assert all((ours[3 * c] == ours[3 * c + k]).all() for c in range(CLIPS) for k in (1, 2))


def test_fast_views_differ_where_the_faithful_mode_says(shard) -> None:
    """The fast mode keeps its own decode, clip bound and portrait crops: the faithful flag changes them."""
    path, jpegs = shard
    fast = EvalViewDataset([path], T, STRIDE, CROP, CLIPS, CROPS, resize="bicubic")
    faithful = EvalViewDataset([path], T, STRIDE, CROP, CLIPS, CROPS, resize="bicubic", faithful=True)
    portrait = fast.video_ids.index("portrait")
    top, centre = fast[portrait]["views"][0], faithful[portrait]["views"][0]
    assert not (top == centre).all()  # fast: top, centre, bottom
    decoded_fast = decode_rgb(jpegs["landscape"][0])
    decoded_pillow = np.asarray(Image.open(io.BytesIO(jpegs["landscape"][0])).convert("RGB"))
    assert (decode_rgb(jpegs["landscape"][0], accurate=True) == decoded_pillow).all()
    assert np.abs(decoded_fast.astype(int) - decoded_pillow.astype(int)).max() >= 1


def test_a_faithful_evaluation_records_its_mode_and_needs_the_bicubic_resize(trained_demo, packed_demo, tmp_path):
    import json

    from tests.engine_helpers import quick_eval_args, run_cli_inprocess

    args = quick_eval_args(trained_demo.checkpoint, packed_demo.val, tmp_path / "linear", "--faithful")
    res = run_cli_inprocess(*args)
    assert res.returncode == 2 and "--faithful with --resize linear" in res.stderr, res.stderr[-2000:]
    out = tmp_path / "faithful"
    res = run_cli_inprocess(
        *quick_eval_args(trained_demo.checkpoint, packed_demo.val, out, "--faithful", "--resize", "bicubic")
    )
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["mode"], metrics["amp"], metrics["resize"]) == ("faithful", "off", "bicubic")
    # The early check reports the first videos' top-1 (all of them here: fewer than its 200).
    assert f"early check: top-1 {metrics['top1']:.1f} % on the first {metrics['videos']} videos" in res.stderr
