"""Training clips and evaluation views over packed shards: indices, crops, determinism, workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.data_helpers import frame_code, numbered_frames, psnr
from tokshift.data.sampling import crop_offsets, eval_clip_indices, train_clip_indices

VIDEOS = {  # video id -> (frames, height, width, label index)
    "land": (40, 48, 64, 0),
    "port": (30, 64, 48, 1),
    "short": (5, 48, 64, 1),
    "one": (1, 48, 64, 0),
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from tokshift.data.jpeg import encode_rgb
    from tokshift.data.store import ShardWriter

    d = tmp_path_factory.mktemp("shards")
    paths = []
    for k, ids in enumerate((["land", "port"], ["short", "one"])):
        path = d / f"shard-{k}.lmdb"
        with ShardWriter(path, ["cls_a", "cls_b"]) as w:
            for vid in ids:
                n, h, wd, label = VIDEOS[vid]
                frames = [encode_rgb(f, 95) for f in numbered_frames(n, h, wd, seed=n)]
                w.add_video(
                    vid,
                    frames,
                    {"label": ["cls_a", "cls_b"][label], "label_index": label, "fps": 10.0, "width": wd, "height": h},
                )
            w.finish()
        paths.append(path)
    return paths


def decoded(shards: list[Path], vid: str) -> np.ndarray:
    from tokshift.data.store import ShardReader

    for s in shards:
        r = ShardReader(s)
        if vid in r:
            return np.stack(r.read_decoded(vid, range(r.meta(vid)["nframes"])))
    raise KeyError(vid)


def test_train_dataset_basics(shards: list[Path]) -> None:
    import torch

    from tokshift.data.datasets import TrainClipDataset

    ds = TrainClipDataset(shards, num_frames=4, frame_stride=3, crop_size=32, short_side_range=(32, 48))
    assert len(ds) == 4 and ds.video_ids == ["land", "port", "short", "one"]
    assert ds.labels == [0, 1, 1, 0] and ds.classes == ["cls_a", "cls_b"]
    clip, label = ds[1]
    assert clip.shape == (4, 3, 32, 32) and clip.dtype == torch.uint8 and clip.is_contiguous() and label == 1
    assert TrainClipDataset(shards[0].parent, 4, 3, 32, (32, 48)).video_ids == ds.video_ids  # a folder of shards


def test_train_clip_takes_the_reference_frames(shards: list[Path]) -> None:
    from tokshift.data.datasets import TrainClipDataset

    # No resize, no crop movement, no flip or jitter: the clip is exactly the sampled frames.
    ds = TrainClipDataset(shards, 4, 3, 48, (48, 48), flip_p=0.0, jitter_p=0.0, seed=7)
    ds.set_epoch(2)
    for i, vid in enumerate(ds.video_ids):
        n, h, _, _ = VIDEOS[vid]
        if h != 48:
            continue  # a portrait crop may cut off the code bar at the top
        expected = train_clip_indices(n, 4, 3, np.random.default_rng([7, 2, i]))
        clip = ds[i][0].permute(0, 2, 3, 1).numpy()
        codes = [frame_code(f) for f in clip]
        assert all(abs(c - (int(e) * 37) % 256) <= 3 for c, e in zip(codes, expected)), (vid, codes, expected)


def test_randomness_depends_only_on_seed_epoch_and_index(shards: list[Path]) -> None:
    import torch
    from torch.utils.data import DataLoader

    from tokshift.data.datasets import TrainClipDataset

    ds = TrainClipDataset(shards, 4, 3, 32, (32, 48), seed=1)
    first = [ds[i][0] for i in range(len(ds))]
    assert all(torch.equal(a, ds[i][0]) for i, a in enumerate(first))
    ds.set_epoch(1)
    assert not all(torch.equal(a, ds[i][0]) for i, a in enumerate(first))
    ds.set_epoch(0)
    by_workers = []
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=2, shuffle=False, num_workers=workers)
        by_workers.append(torch.cat([x for x, _ in loader]))
    assert torch.equal(by_workers[0], by_workers[1]) and torch.equal(by_workers[0], torch.stack(first))
    other = TrainClipDataset(shards, 4, 3, 32, (32, 48), seed=2)
    assert not torch.equal(torch.stack([other[i][0] for i in range(4)]), torch.stack(first))


def test_eval_dataset_in_spawned_worker(shards: list[Path]) -> None:
    import torch
    from torch.utils.data import DataLoader

    from tokshift.data.datasets import EvalViewDataset

    ds = EvalViewDataset(shards, 4, 3, 32, num_clips=2, num_crops=1)
    direct = [ds[i]["views"] for i in range(len(ds))]
    loader = DataLoader(ds, batch_size=None, num_workers=1, multiprocessing_context="spawn")
    got = list(loader)
    assert [g["video_id"] for g in got] == ds.video_ids
    assert all(torch.equal(g["views"], d) for g, d in zip(got, direct))


def test_crop_first_resize_equals_resize_then_crop() -> None:
    import cv2

    from tokshift.data.transforms import ClipAugment, short_side_size

    rng = np.random.default_rng(0)
    frames = [cv2.GaussianBlur(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), (0, 0), 2.0) for _ in range(3)]
    aug = ClipAugment(64, (64, 96), flip_p=0.0, jitter_p=0.0)
    for seed in range(20):
        p = aug.draw(96, 128, np.random.default_rng(seed))
        got = aug.apply(frames, p)
        nh, nw = short_side_size(96, 128, p.short_side)
        ref = np.stack(
            [cv2.resize(f, (nw, nh), interpolation=cv2.INTER_LINEAR)[p.y : p.y + 64, p.x : p.x + 64] for f in frames]
        )
        assert psnr(got, ref) > 30, (seed, p, psnr(got, ref))
        shifted = (
            np.stack(
                [
                    cv2.resize(f, (nw, nh), interpolation=cv2.INTER_LINEAR)[p.y : p.y + 64, p.x + 3 : p.x + 67]
                    for f in frames
                ]
            )
            if p.x + 67 <= nw
            else None
        )
        if shifted is not None:  # the comparison is sharp enough to see a 3-pixel shift
            assert psnr(got, shifted) < psnr(got, ref) - 3


def test_flip_and_jitter(shards: list[Path]) -> None:
    from tokshift.data.transforms import ClipAugment, adjust_hue

    frames = list(decoded(shards, "land")[:2])
    plain = ClipAugment(32, (40, 40), flip_p=0.0, jitter_p=0.0)
    flipped = ClipAugment(32, (40, 40), flip_p=1.0, jitter_p=0.0)
    jittered = ClipAugment(32, (40, 40), flip_p=0.0, jitter_p=1.0)
    a = plain(frames, np.random.default_rng(3))
    b = flipped(frames, np.random.default_rng(3))
    assert np.array_equal(a[:, :, ::-1], b)
    p = jittered.draw(48, 64, np.random.default_rng(3))
    assert [name for name, _ in p.jitter] == ["brightness", "saturation", "gamma", "hue"]
    assert not np.array_equal(jittered.apply(frames, p), a)
    # hue: a full turn is the identity, half a turn changes pure red into cyan
    red = np.zeros((1, 2, 2, 3), np.uint8)
    red[..., 0] = 255
    assert np.array_equal(adjust_hue(red, 0.0), red)
    cyan = adjust_hue(red, 0.5)[0, 0, 0]
    assert cyan[0] < 10 and cyan[1] > 245 and cyan[2] > 245


def test_short_side_range_must_fit_the_crop() -> None:
    from tokshift.data.transforms import ClipAugment

    with pytest.raises(ValueError, match="short_side_range"):
        ClipAugment(224, (200, 330))


def reference_views(frames: np.ndarray, T: int, stride: int, crop: int, clips: int, crops: int) -> np.ndarray:
    import cv2

    from tokshift.data.transforms import short_side_size

    views = []
    for idx in eval_clip_indices(len(frames), T, stride, clips):
        resized = []
        for i in idx:
            f = frames[i]
            nh, nw = short_side_size(f.shape[0], f.shape[1], crop)
            resized.append(cv2.resize(f, (nw, nh), interpolation=cv2.INTER_LINEAR))
        for y, x in crop_offsets(resized[0].shape[0], resized[0].shape[1], crop, crops):
            views.append(np.stack([r[y : y + crop, x : x + crop].transpose(2, 0, 1) for r in resized]))
    return np.stack(views)


@pytest.mark.parametrize("clips,crops", [(10, 3), (1, 1), (2, 3), (3, 1)])
def test_eval_views_match_reference(shards: list[Path], clips: int, crops: int) -> None:
    import torch

    from tokshift.data.datasets import EvalViewDataset, eval_views_from_frames

    ds = EvalViewDataset(shards, num_frames=4, frame_stride=3, crop_size=32, num_clips=clips, num_crops=crops)
    assert len(ds) == 4 and ds.classes == ["cls_a", "cls_b"]
    for i, vid in enumerate(ds.video_ids):
        item = ds[i]
        assert item["video_id"] == vid and item["label"] == VIDEOS[vid][3]
        views = item["views"]
        assert views.dtype == torch.uint8 and views.shape == (clips * crops, 4, 3, 32, 32)
        frames = decoded(shards, vid)
        expected = reference_views(frames, 4, 3, 32, clips, crops)
        assert np.array_equal(views.numpy(), expected)
        assert torch.equal(eval_views_from_frames(frames, 4, 3, 32, clips, crops), views)


def test_eval_views_order_clip_major_and_crops_along_long_side(shards: list[Path]) -> None:
    import cv2

    from tokshift.data.datasets import EvalViewDataset

    ds = EvalViewDataset(shards, 4, 3, 32)
    land = ds[0]["views"]  # landscape 48x64 -> 32x42: crops at x = 0, 5, 10
    resized = cv2.resize(decoded(shards, "land")[0], (42, 32), interpolation=cv2.INTER_LINEAR)
    for k, x in enumerate((0, 5, 10)):
        assert np.array_equal(land[k, 0].numpy(), resized[:, x : x + 32].transpose(2, 0, 1))
    starts = [min(int(c * 40 / 10), 40 - 12) for c in range(10)]
    for c, s in enumerate(starts):  # view v = clip * 3 + crop: frame codes follow the clip starts
        assert abs(frame_code(land[c * 3 + 1, 0].permute(1, 2, 0).numpy()) - (s * 37) % 256) <= 3
    port = ds[1]["views"]  # portrait: top, centre, bottom
    resized = cv2.resize(decoded(shards, "port")[0], (32, 42), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(port[2, 0].numpy(), resized[10:42].transpose(2, 0, 1))


def test_eval_single_frame_and_short_videos_wrap(shards: list[Path]) -> None:
    import torch

    from tokshift.data.datasets import EvalViewDataset, eval_views_from_frames

    ds = EvalViewDataset(shards, 4, 3, 32)
    one = ds[ds.video_ids.index("one")]["views"]
    assert torch.equal(one[0, 0], one[27, 3]) and torch.equal(one[1, 0], one[28, 2])  # only one frame
    short = decoded(shards, "short")
    views = eval_views_from_frames(short, 4, 3, 32, 10, 1)
    codes = [frame_code(views[0, t].permute(1, 2, 0).numpy()) for t in range(4)]
    assert [round(c / 37) for c in codes] == [0, 3, 1, 4]  # (0, 3, 6, 9) mod 5
    with pytest.raises(ValueError, match="no frames"):
        eval_views_from_frames(np.zeros((0, 8, 8, 3), np.uint8), 4, 3, 32)


def test_jpeg_decode_is_rgb(tmp_path: Path) -> None:
    from tokshift.data.jpeg import decode_rgb, encode_rgb

    img = np.zeros((16, 16, 3), np.uint8)
    img[..., 0] = 200
    out = decode_rgb(encode_rgb(img, 95))
    assert out[..., 0].mean() > 190 and out[..., 2].mean() < 10
