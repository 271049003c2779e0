"""Benchmark clip loading per DataLoader worker: fast path vs a Pillow-only baseline, same run.

Packs Kinetics-like videos (short side 331, JPEG q90, 300 frames each) with ``tokshift pack``,
then times, on one core (one worker's share), interleaved rounds of:

* training clips, 8 frames x stride 32, 224 crop, short side in [224, 330], flip, jitters
  (``TrainClipDataset``: simplejpeg decode + crop-first OpenCV resize, uint8 out);
* evaluation samples of 30 views (10 clips x 3 crops) of 8 x 224 (``EvalViewDataset``), with
  each ``evaluate.resize``: ``linear`` (OpenCV bilinear) and ``bicubic`` (antialiased, as Pillow);
* the raw LMDB reads of those training clips (8 JPEGs, no decode; with per-value CRC32 checks
  since frame format v2), which isolates the cost of the store itself;
* the same sampling, LMDB reads and crops done with Pillow (decode + bicubic short-side resize
  + crop, the original project's path), uint8 out; and Pillow plus the original's float
  normalisation on the CPU.

Reports clips per second (wall and per CPU-second, which is robust to a busy machine) and the
speed-up of the fast path over the Pillow baseline.

    python bench/bench_loader.py [--videos 6] [--rounds 5] [--clips 40] [--eval-only]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_pack import machine, make_sources  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.transforms import functional as TF  # noqa: E402

from tokshift.data.datasets import EvalViewDataset, TrainClipDataset  # noqa: E402
from tokshift.data.pack import pack_rows  # noqa: E402
from tokshift.data.sampling import crop_offsets, eval_clip_indices, train_clip_indices  # noqa: E402
from tokshift.data.sources import IndexRow  # noqa: E402
from tokshift.data.store import ShardReader  # noqa: E402

T, STRIDE, CROP, SHORT = 8, 32, 224, (224, 330)


def pil_short_side(img: Image.Image, short: int) -> Image.Image:
    w, h = img.size
    size = (short, int(h * short / w)) if w <= h else (int(w * short / h), short)
    return img.resize(size, Image.BICUBIC)


class PillowTrain:
    """The baseline: the same clips through Pillow (decode, bicubic resize, crop, flip, jitters)."""

    def __init__(self, shards: list[Path], normalise: bool = False) -> None:
        self.readers = [ShardReader(s) for s in shards]
        self.items = [(r, v["video_id"], v["nframes"]) for r in self.readers for v in r.videos()]
        self.normalise = normalise

    def __getitem__(self, i: int) -> torch.Tensor:
        reader, vid, n = self.items[i]
        rng = np.random.default_rng([0, 0, i])
        idx = train_clip_indices(n, T, STRIDE, rng)
        short = int(rng.integers(SHORT[0], SHORT[1] + 1))
        imgs = [pil_short_side(Image.open(io.BytesIO(b)).convert("RGB"), short) for b in reader.read_frames(vid, idx)]
        w, h = imgs[0].size
        y, x = int(rng.integers(0, h - CROP + 1)), int(rng.integers(0, w - CROP + 1))
        imgs = [im.crop((x, y, x + CROP, y + CROP)) for im in imgs]
        if rng.random() < 0.5:
            imgs = [TF.hflip(im) for im in imgs]
        for fn, lo, hi in (
            (TF.adjust_brightness, 0.5, 2),
            (TF.adjust_saturation, 0.5, 3),
            (TF.adjust_gamma, 0.8, 1.2),
            (TF.adjust_hue, -0.5, 0.5),
        ):
            apply, value = rng.random() < 0.1, rng.uniform(lo, hi)
            if apply:
                imgs = [fn(im, value) for im in imgs]
        if self.normalise:
            return torch.stack([TF.normalize(TF.to_tensor(im), [0.5] * 3, [0.5] * 3) for im in imgs])
        return torch.from_numpy(np.stack([np.asarray(im) for im in imgs]).transpose(0, 3, 1, 2).copy())


class RawReads:
    """Only the store: the JPEG bytes of each training clip's 8 frames, not decoded."""

    def __init__(self, shards: list[Path]) -> None:
        self.readers = [ShardReader(s) for s in shards]
        self.items = [(r, v["video_id"], v["nframes"]) for r in self.readers for v in r.videos()]

    def __getitem__(self, i: int) -> list[bytes]:
        reader, vid, n = self.items[i % len(self.items)]
        return reader.read_frames(vid, train_clip_indices(n, T, STRIDE, np.random.default_rng([0, 0, i])))


class PillowEval:
    """The baseline for 30-view samples: each distinct frame decoded and resized once with Pillow."""

    def __init__(self, shards: list[Path]) -> None:
        self.readers = [ShardReader(s) for s in shards]
        self.items = [(r, v["video_id"], v["nframes"]) for r in self.readers for v in r.videos()]

    def __getitem__(self, i: int) -> torch.Tensor:
        reader, vid, n = self.items[i]
        clips = eval_clip_indices(n, T, STRIDE, 10)
        unique = sorted({int(j) for c in clips for j in c})
        frames = {
            j: np.asarray(pil_short_side(Image.open(io.BytesIO(b)).convert("RGB"), CROP))
            for j, b in zip(unique, reader.read_frames(vid, unique))
        }
        views = []
        for c in clips:
            h, w = frames[int(c[0])].shape[:2]
            for y, x in crop_offsets(h, w, CROP, 3):
                views.append(np.stack([frames[int(j)][y : y + CROP, x : x + CROP] for j in c]))
        return torch.from_numpy(np.stack(views).transpose(0, 1, 4, 2, 3).copy())


def timed(get, indices: list[int]) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(wall seconds, CPU seconds) to fetch ``indices``."""
    t0, c0 = time.perf_counter(), time.process_time()
    for i in indices:
        get(i)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clips", type=int, default=40, help="training clips per round and method")
    ap.add_argument("--eval-samples", type=int, default=4, help="30-view samples per round and method")
    ap.add_argument("--eval-only", action="store_true", help="time only the evaluation loaders")
    args = ap.parse_args()
    torch.set_num_threads(1)

    print(f"machine: {machine()}, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "src").mkdir()
        sources = make_sources(tmp_path / "src", args.videos, 10.0)
        rows = [IndexRow(p.stem, str(p), "x", 0, "train", 0) for p in sources]
        shard = tmp_path / "shard-0.lmdb"
        pack_rows(rows, ["x"], shard, tmp_path / "f.csv", short_side=331, jpeg_quality=90, workers=2, progress=False)
        meta = next(ShardReader(shard).videos())
        print(
            f"data: {args.videos} videos x {meta['nframes']} frames, {meta['width']}x{meta['height']} JPEG q90 "
            f"({meta['bytes'] / meta['nframes'] / 1e3:.1f} kB/frame); one process, 1 thread (one worker's share)\n"
        )

        fast_train = TrainClipDataset([shard], T, STRIDE, CROP, SHORT)
        fast_eval = EvalViewDataset([shard], T, STRIDE, CROP)
        bicubic_eval = EvalViewDataset([shard], T, STRIDE, CROP, resize="bicubic")
        methods = {
            "train 8x224: fast (uint8)": (fast_train.__getitem__, "train"),
            "raw reads of the 8 training JPEGs (store only)": (RawReads([shard]).__getitem__, "raw"),
            "train 8x224: Pillow (uint8) [baseline]": (PillowTrain([shard]).__getitem__, "train"),
            "train 8x224: Pillow + CPU float normalise (original)": (PillowTrain([shard], True).__getitem__, "train"),
            "eval 30 views: fast (uint8)": (fast_eval.__getitem__, "eval"),
            "eval 30 views: fast, --resize bicubic (uint8)": (bicubic_eval.__getitem__, "eval"),
            "eval 30 views: Pillow (uint8) [baseline]": (PillowEval([shard]).__getitem__, "eval"),
        }
        if args.eval_only:
            methods = {k: v for k, v in methods.items() if v[1] == "eval"}
        n = len(fast_train)
        for get, _ in methods.values():  # warm the page cache and imports
            get(0)
        wall: dict[str, list[float]] = {k: [] for k in methods}
        cpu: dict[str, list[float]] = {k: [] for k in methods}
        for r in range(args.rounds):
            order = list(methods) if r % 2 == 0 else list(reversed(methods))
            for name in order:
                get, kind = methods[name]
                count = {"train": args.clips, "raw": 25 * args.clips, "eval": args.eval_samples}[kind]
                idx = [(r * count + k) % n if kind != "raw" else r * count + k for k in range(count)]
                w, c = timed(get, idx)
                wall[name].append(count / w)
                cpu[name].append(count / c)
        print("| loader | samples/s (wall, median) | samples per CPU-second (median) | vs Pillow baseline (CPU) |")
        print("|---|---|---|---|")
        for name in methods:
            if name.startswith("raw"):
                print(f"| {name} | {statistics.median(wall[name]):.1f} | {statistics.median(cpu[name]):.1f} | - |")
                continue
            base = (
                "train 8x224: Pillow (uint8) [baseline]"
                if name.startswith("train")
                else "eval 30 views: Pillow (uint8) [baseline]"
            )
            ratio = statistics.median(cpu[name]) / statistics.median(cpu[base])
            print(
                f"| {name} | {statistics.median(wall[name]):.1f} | {statistics.median(cpu[name]):.1f} | {ratio:.2f}x |"
            )
        linear, bicubic = "eval 30 views: fast (uint8)", "eval 30 views: fast, --resize bicubic (uint8)"
        ratio = statistics.median(cpu[bicubic]) / statistics.median(cpu[linear])
        print(f"\neval --resize bicubic vs linear (per CPU-second): {ratio:.2f}x")


if __name__ == "__main__":
    main()
