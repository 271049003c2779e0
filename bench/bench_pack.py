"""Benchmark ffmpeg -> LMDB packing throughput (frames/s and frames/s per core).

Generates Kinetics-like sources (H.264, 340x256, 30 fps, textured moving content), then packs
them at short side 331 / JPEG quality 90 with 1 and with N workers, against a baseline run in
the same process: ffmpeg writing JPEG files to disk itself (``img_%05d.jpg``, the original
project's frame folders), one single-threaded ffmpeg per video, same resize.

    python bench/bench_pack.py [--videos 8] [--seconds 10] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ffmpeg  # noqa: E402

from tokshift.data.decode import scale_short_side  # noqa: E402
from tokshift.data.ffmpeg import compile_command, ffmpeg_executable  # noqa: E402
from tokshift.data.pack import pack_rows  # noqa: E402
from tokshift.data.sources import IndexRow  # noqa: E402


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores usable, Python {platform.python_version()}"


def make_sources(folder: Path, count: int, seconds: float, size: str = "340x256") -> list[Path]:
    """Textured, moving H.264 clips like Kinetics downloads (340x256 unless `size` says, 30 fps)."""
    out = []
    for i in range(count):
        path = folder / f"src_{i:03d}.mp4"
        src = ffmpeg.input(f"testsrc2=size={size}:rate=30:duration={seconds}", format="lavfi")
        textured = src.filter("noise", alls=8 + i % 5, allf="t").filter("hue", H=f"t*{i % 3}")
        clip = textured.output(str(path), vcodec="libx264", preset="veryfast", crf=23, pix_fmt="yuv420p", threads=1)
        subprocess.run(compile_command(clip, "-loglevel", "error", overwrite=True), check=True)
        out.append(path)
    return out


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (ffmpeg, pool workers): robust to machine load."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def baseline_files(sources: list[Path], folder: Path, short_side: int, workers: int) -> tuple[int, float]:
    """ffmpeg writes JPEG files itself (mjpeg -q:v 2), one process per video, `workers` in flight."""
    t0 = time.perf_counter()
    procs: list[subprocess.Popen[bytes]] = []
    for i, src in enumerate(sources):
        d = folder / f"v{i}"
        d.mkdir(parents=True)
        frames = scale_short_side(ffmpeg.input(str(src), threads=1), short_side)
        files = frames.output(str(d / "img_%05d.jpg"), fps_mode="passthrough", **{"q:v": 2})
        procs.append(subprocess.Popen(compile_command(files, "-loglevel", "error")))
        while sum(p.poll() is None for p in procs) >= workers:
            time.sleep(0.005)
    for p in procs:
        p.wait()
    seconds = time.perf_counter() - t0
    frames = sum(len(list((folder / f"v{i}").iterdir())) for i in range(len(sources)))
    return frames, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--short-side", type=int, default=331)
    ap.add_argument("--quality", type=int, default=90)
    args = ap.parse_args()

    print(f"machine: {machine()}, load average {os.getloadavg()[0]:.1f}")
    print(f"ffmpeg: {ffmpeg_executable()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "src").mkdir()
        sources = make_sources(tmp_path / "src", args.videos, args.seconds)
        rows = [IndexRow(p.stem, str(p), "x", 0, "train", 0) for p in sources]
        print(
            f"sources: {len(sources)} H.264 videos, 340x256, 30 fps, {args.seconds:g} s; "
            f"output short side {args.short_side}, JPEG q{args.quality}\n"
        )
        print(
            "| method | workers | frames | wall s | frames/s (wall) | CPU s | frames per CPU-second "
            "| vs baseline (per CPU-s) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        base: dict[int, float] = {}
        for workers in sorted({1, args.workers}):
            c0 = cpu_seconds()
            frames, seconds = baseline_files(sources, tmp_path / f"files{workers}", args.short_side, workers)
            cpu = cpu_seconds() - c0
            base[workers] = frames / cpu
            print(
                f"| ffmpeg -> JPEG files (baseline) | {workers} | {frames} | {seconds:.2f} | {frames / seconds:.0f} "
                f"| {cpu:.2f} | {frames / cpu:.0f} | 1.00x |"
            )
            shutil.rmtree(tmp_path / f"files{workers}")
            out = tmp_path / f"shard{workers}.lmdb"
            c0 = cpu_seconds()
            result = pack_rows(
                rows,
                ["x"],
                out,
                tmp_path / f"f{workers}.csv",
                short_side=args.short_side,
                jpeg_quality=args.quality,
                workers=workers,
                progress=False,
            )
            cpu = cpu_seconds() - c0
            print(
                f"| tokshift pack (ffmpeg pipe -> LMDB) | {workers} | {result.frames} | {result.seconds:.2f} | "
                f"{result.frames / result.seconds:.0f} | {cpu:.2f} | {result.frames / cpu:.0f} "
                f"| {result.frames / cpu / base[workers]:.2f}x |"
            )
            size = out.stat().st_size
        print(
            f"\nshard file: {size / 1e6:.1f} MB for {result.frames} frames "
            f"({size / result.frames / 1e3:.1f} kB/frame, "
            f"JPEG payload {result.bytes / result.frames / 1e3:.1f} kB/frame)"
        )


if __name__ == "__main__":
    main()
