"""What `frames.short_side` and `frames.jpeg_quality` cost in disk and buy in fidelity.

For Kinetics-like sources made by ffmpeg (textured, moving `testsrc2` + temporal noise and a
`mandelbrot` zoom at 340x256, and `testsrc2` + noise at 640x360 like many original-resolution
clips), each setting decodes the frames exactly as `tokshift pack` does (ffmpeg, short-side
resize, full-range 4:2:0 planes), JPEG-encodes them, and reports the mean JPEG size per frame and
the luma PSNR of the decoded JPEG against the frame it was made from. The default setting is
also packed into a real shard, for the shard bytes per frame (JPEG + LMDB + checksums).

    python bench/bench_frames_quality.py [--seconds 3] [--sizes 256 331] [--qualities 75 90 95]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import simplejpeg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ffmpeg  # noqa: E402

from tokshift.data.decode import VideoFrames  # noqa: E402
from tokshift.data.ffmpeg import compile_command  # noqa: E402
from tokshift.data.jpeg import encode_yuv420  # noqa: E402
from tokshift.data.pack import pack_rows  # noqa: E402
from tokshift.data.sources import IndexRow  # noqa: E402

SOURCES = {
    "testsrc2+noise 340x256": ("testsrc2=size=340x256:rate=30", True),
    "mandelbrot 340x256": ("mandelbrot=size=340x256:rate=30", False),
    "testsrc2+noise 640x360": ("testsrc2=size=640x360:rate=30", True),
}


def machine() -> str:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        "unknown CPU",
    )
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores usable, Python {platform.python_version()}"


def make_source(path: Path, lavfi: str, noise: bool, seconds: float) -> None:
    src = ffmpeg.input(lavfi, format="lavfi", t=seconds)  # mandelbrot has no duration option
    if noise:
        src = src.filter("noise", alls=10, allf="t")
    out = src.output(str(path), vcodec="libx264", preset="veryfast", crf=23, pix_fmt="yuv420p", threads=1)
    subprocess.run(compile_command(out, "-loglevel", "error", overwrite=True), check=True)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def measure(video: Path, short_side: int, qualities: list[int]) -> dict[int, tuple[float, float, str]]:
    """Per quality: mean JPEG kB per frame, mean luma PSNR (dB), frame size."""
    sizes: dict[int, list[int]] = {q: [] for q in qualities}
    scores: dict[int, list[float]] = {q: [] for q in qualities}
    with VideoFrames(video, short_side=short_side, pixel_format="yuv420") as reader:
        for y, u, v in reader:
            for q in qualities:
                jpeg = encode_yuv420(y, u, v, q)
                sizes[q].append(len(jpeg))
                scores[q].append(psnr(simplejpeg.decode_jpeg(jpeg, colorspace="GRAY")[..., 0], y))
        dims = f"{reader.width}x{reader.height}"
    return {q: (float(np.mean(sizes[q])) / 1e3, float(np.mean(scores[q])), dims) for q in qualities}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 331])
    ap.add_argument("--qualities", type=int, nargs="+", default=[75, 90, 95])
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print("| source | short side | quality | frame | kB/frame | luma PSNR dB |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        videos = {}
        for name, (lavfi, noise) in SOURCES.items():
            videos[name] = Path(tmp) / f"{len(videos)}.mp4"
            make_source(videos[name], lavfi, noise, args.seconds)
        for name, video in videos.items():
            for side in args.sizes:
                for q, (kb, db, dims) in measure(video, side, args.qualities).items():
                    print(f"| {name} | {side} | {q} | {dims} | {kb:.1f} | {db:.1f} |", flush=True)
        rows = [IndexRow(n, str(v), "x", 0, "train", 0) for n, v in videos.items()]
        res = pack_rows(rows, ["x"], Path(tmp) / "s.lmdb", Path(tmp) / "f.csv", workers=1, progress=False)
        shard = (Path(tmp) / "s.lmdb").stat().st_size
        jpeg_kb, shard_kb = res.bytes / res.frames / 1e3, shard / res.frames / 1e3
        print(
            f"default settings (331, q90) packed: {res.frames} frames, JPEG {jpeg_kb:.1f} kB/frame,"
            f" shard {shard_kb:.1f} kB/frame (LMDB + checksums {100 * (shard / res.bytes - 1):.1f} %)"
        )


if __name__ == "__main__":
    main()
