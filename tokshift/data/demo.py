"""Generate the demo dataset: tiny labelled H.264 clips whose classes differ only in time.

Four classes come in two pairs that differ only by the direction of change: the whole frame
brightens or darkens, a disc grows or shrinks. Every frame of a ``brighten`` clip is
distributed like some frame of a ``darken`` clip, so a model that pools per-frame features
(the plain video ViT) cannot tell a pair apart, while TokShift, which mixes neighbouring frames,
can. Colours, positions, levels and noise are random per clip from a fixed seed, and ffmpeg
runs single-threaded with bit-exact flags, so a rerun writes byte-identical files.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np
from tqdm import tqdm

from tokshift.data.ffmpeg import compile_command
from tokshift.errors import BadInput
from tokshift.fileio import atomic_path, atomic_write_text

__all__ = ["CLASSES", "DemoConfig", "encode_h264", "generate_demo", "render_clip"]

log = logging.getLogger(__name__)

CLASSES = ("brighten", "darken", "disc_grow", "disc_shrink")
_SPLIT_SALT = {"train": 0, "val": 1}


@dataclass(frozen=True)
class DemoConfig:
    """Size of the demo dataset (defaults: 512 train + 128 val clips of 24 frames, 64x64 at 8 fps)."""

    seed: int = 0
    train_per_class: int = 128
    val_per_class: int = 32
    frames: int = 24
    size: int = 64
    fps: int = 8
    crf: int = 20


def _ramp(
    rng: np.random.Generator, n: int, increasing: bool, lo: tuple[float, float], hi: tuple[float, float]
) -> np.ndarray:
    """A linear ramp from a low to a high value (or back), endpoints drawn per clip."""
    a, b = rng.uniform(*lo), rng.uniform(*hi)
    ramp = np.linspace(a, b, n)
    return ramp if increasing else ramp[::-1].copy()


def render_clip(label: str, rng: np.random.Generator, frames: int = 24, size: int = 64) -> np.ndarray:
    """Render one clip of class ``label`` as (frames, size, size, 3) uint8 RGB."""
    if label not in CLASSES:
        raise ValueError(f"unknown demo class {label!r}; choose from {CLASSES}")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # A smooth static texture so frames are not flat (cheap to compress, not trivially constant).
    fx, fy, phase = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
    texture = 0.85 + 0.15 * np.sin(2 * np.pi * (fx * xx + fy * yy) / size + phase)
    if label in ("brighten", "darken"):
        colour = rng.uniform(0.35, 1.0, size=3)
        level = _ramp(rng, frames, label == "brighten", lo=(0.15, 0.4), hi=(0.65, 0.95))
        clip = level[:, None, None, None] * (texture[None, :, :, None] * colour[None, None, None, :])
    else:
        background = rng.uniform(0.1, 0.5, size=3)
        disc = rng.uniform(0.55, 1.0, size=3)
        cy, cx = rng.uniform(0.35 * size, 0.65 * size, size=2)
        radius = _ramp(rng, frames, label == "disc_grow", lo=(0.06 * size, 0.14 * size), hi=(0.3 * size, 0.42 * size))
        dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        inside = np.clip(radius[:, None, None] - dist[None] + 0.5, 0.0, 1.0)[..., None]  # anti-aliased edge
        base = texture[..., None] * background
        clip = base[None] * (1 - inside) + disc[None, None, None, :] * inside
    noise = rng.standard_normal(size=clip.shape, dtype=np.float32)
    clip = clip.astype(np.float32) * 255.0 + noise * 5.0 + 0.5
    return np.clip(clip, 0, 255).astype(np.uint8)


def _h264_command(width: int, height: int, fps: int, crf: int, dest: Path) -> list[str]:
    """ffmpeg reading raw RGB frames on stdin and writing a bit-exact, single-threaded H.264 mp4."""
    raw = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", r=str(fps))
    options = {
        "c:v": "libx264",
        "preset": "veryfast",
        "crf": str(crf),
        "pix_fmt": "yuv420p",
        "threads": "1",
        "x264-params": "threads=1:sliced-threads=0",
        "fflags": "+bitexact",
        "flags:v": "+bitexact",
        "map_metadata": "-1",
    }
    return compile_command(raw.output(str(dest), **options), "-loglevel", "error", overwrite=True)


def encode_h264(frames: np.ndarray, out: str | os.PathLike[str], fps: int = 8, crf: int = 20) -> None:
    """Encode RGB frames to an H.264 mp4 with reproducible (bit-exact, single-threaded) settings."""
    n, h, w, _ = frames.shape
    out = Path(out)
    with atomic_path(out, suffix=".mp4") as tmp:
        cmd = _h264_command(w, h, fps, crf, tmp)
        proc = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg could not encode {out}: {proc.stderr.decode(errors='replace').strip()[-500:]}")


def _clip_rng(seed: int, split: str, class_index: int, clip: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_SALT[split], class_index, clip])


def generate_demo(
    out: str | os.PathLike[str],
    cfg: DemoConfig = DemoConfig(),
    workers: int | None = None,
    classes: Sequence[str] = CLASSES,
    progress: bool | None = True,
) -> dict[str, Path]:
    """Write ``out/videos/{split}/{class}_{i:04d}.mp4`` and ``out/{train,val}.csv``; returns the CSVs.

    ``progress`` None shows the bar only when stderr is a terminal.
    """
    if cfg.frames < 1 or cfg.size < 8 or cfg.train_per_class < 1 or cfg.val_per_class < 1:
        raise BadInput(f"demo sizes must be positive (frames >= 1, size >= 8): {cfg}")
    out = Path(out)
    jobs: list[tuple[str, int, int, Path]] = []
    for split, count in (("train", cfg.train_per_class), ("val", cfg.val_per_class)):
        (out / "videos" / split).mkdir(parents=True, exist_ok=True)
        for ci, _label in enumerate(classes):
            for i in range(count):
                jobs.append((split, ci, i, out / "videos" / split / f"{classes[ci]}_{i:04d}.mp4"))

    def make(job: tuple[str, int, int, Path]) -> None:
        split, ci, i, path = job
        clip = render_clip(classes[ci], _clip_rng(cfg.seed, split, ci, i), cfg.frames, cfg.size)
        encode_h264(clip, path, fps=cfg.fps, crf=cfg.crf)

    workers = workers or max(1, len(os.sched_getaffinity(0)))
    disable = None if progress is None else not progress
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in tqdm(pool.map(make, jobs), total=len(jobs), desc="demo videos", unit="clip", disable=disable):
            pass
    csvs = {}
    for split in ("train", "val"):
        path = out / f"{split}.csv"
        buf = io.StringIO(newline="")
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["path", "label"])
        for s, ci, _i, p in jobs:
            if s == split:
                writer.writerow([p.relative_to(out).as_posix(), classes[ci]])
        atomic_write_text(path, buf.getvalue())
        csvs[split] = path
    log.info("demo dataset: %d clips in %s", len(jobs), out)
    return csvs
