"""How the data stage's cost grows with the dataset, up to Kinetics-400 scale.

Three measurements, each at two sizes so the growth shows (wall time and peak RSS of the
`tokshift` command, run as its own process):

* index: an annotation CSV of N rows (Kinetics columns) against a tree of N empty ``.mp4``
  files in 400 class folders (a few listed rows absent);
* pack + listing + summarize: N frame folders of 4 tiny JPEGs each (hard links of one file, so
  the cost measured is the shard, its header and the listing, not ffmpeg) in one shard;
* clip loading: a shard of >= 1M small frames written directly, then random 8-frame clips
  (stride 32) through the training dataset's reader, warm and after dropping the page cache.

    python bench/bench_scale.py [--index 26000 260000] [--pack 1000 10000] [--frames 1048576]
"""

from __future__ import annotations

import argparse
import csv
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokshift.data.jpeg import encode_rgb  # noqa: E402
from tokshift.data.sources import IndexResult, IndexRow, write_index  # noqa: E402
from tokshift.data.store import ShardReader, ShardWriter  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores usable, Python {platform.python_version()}"


def timed(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; its wall seconds and peak RSS in MB (from wait4, this child only)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def tokshift(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from tokshift.cli import main; sys.exit(main())", *args]


def bench_index(n: int, tmp: Path) -> dict[str, float]:
    root = tmp / f"k400_{n}"
    ann = tmp / f"train_{n}.csv"
    t0 = time.perf_counter()
    with open(ann, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split", "is_cc"])
        for i in range(n):
            label = f"class {i % 400:03d}"
            yid = f"{i:011d}"
            w.writerow([label, yid, 10, 20, "train", 0])
            if i % 100:  # 1 % of the annotated clips are absent
                folder = root / label
                if i < 800:
                    folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{yid}_000010_000020.mp4").touch()
    setup = time.perf_counter() - t0
    spec = (
        f'{{"kind": "kinetics", "zoo": "k400", "root": "{root}", "annotations": {{"train": "{ann}", "val": "{ann}"}}}}'
    )
    out = tmp / f"index_{n}" / "train.csv"
    wall, rss = timed(tokshift("index", "--spec-json", spec, "--split", "train", "--shards", "16", "--out", str(out)))
    rows = sum(1 for _ in open(out)) - 1
    missing = sum(1 for _ in open(out.with_name("train.missing.csv"))) - 1
    shutil.rmtree(root)
    return {"rows": n, "indexed": rows, "missing": missing, "wall_s": wall, "rss_mb": rss, "setup_s": setup}


def bench_pack(n: int, tmp: Path) -> dict[str, float]:
    work = tmp / f"pack_{n}"
    frame = encode_rgb(np.random.default_rng(0).integers(0, 255, (32, 40, 3), dtype=np.uint8), 90)
    src = work / "frame.jpg"
    work.mkdir(parents=True)
    src.write_bytes(frame)
    rows = []
    for i in range(n):
        folder = work / "videos" / f"v{i:06d}"
        folder.mkdir(parents=True)
        for k in range(1, 5):
            os.link(src, folder / f"img_{k:05d}.jpg")
        rows.append(IndexRow(f"v{i:06d}", str(folder), f"c{i % 400}", i % 400, "train", 0))
    index = work / "index" / "train.csv"
    write_index(IndexResult("train", [f"c{k}" for k in range(400)], rows, []), index)
    shard = work / "frames" / "shard-0.lmdb"
    wall, rss = timed(
        tokshift(
            "pack", "--index", str(index), "--shard", "0", "--out", str(shard), "--workers", "1", "--progress", "off"
        )
    )
    listing = shard.with_suffix(".videos.csv")
    s_wall, s_rss = timed(
        tokshift("summarize", "--index", str(index), "--shards-dir", str(shard.parent), "--out", str(work / "s.json"))
    )
    out = {
        "videos": n,
        "pack_wall_s": wall,
        "pack_rss_mb": rss,
        "ms_per_video": 1000 * wall / n,
        "shard_mb": shard.stat().st_size / 1e6,
        "listing_kb": listing.stat().st_size / 1e3,
        "summarize_wall_s": s_wall,
        "summarize_rss_mb": s_rss,
    }
    shutil.rmtree(work)
    return out


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def bench_loader(frames: int, tmp: Path, clips: int = 2000) -> dict[str, float | str]:
    from tokshift.data.datasets import _ShardSet

    per_video = 256
    videos = (frames + per_video - 1) // per_video
    rng = np.random.default_rng(0)
    jpegs = [encode_rgb(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), 90) for _ in range(16)]
    shard = tmp / "big" / "shard-0.lmdb"
    t0 = time.perf_counter()
    with ShardWriter(shard, [f"c{k}" for k in range(400)], map_size=frames * 1200) as w:
        for v in range(videos):
            w.add_video(
                f"{v:011d}_000000_000010",
                [jpegs[(v + i) % 16] for i in range(per_video)],
                {"label": f"c{v % 400}", "label_index": v % 400, "fps": 25.0, "width": 16, "height": 16},
            )
        w.finish()
    write_s = time.perf_counter() - t0
    tracemalloc.start()
    t0 = time.perf_counter()
    shard_set = _ShardSet([shard])
    open_s = time.perf_counter() - t0
    set_bytes = tracemalloc.get_traced_memory()[0]  # what stays in memory: the flat arrays
    per_worker = len(pickle.dumps(shard_set))
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    with_header = ShardReader(shard)
    header = with_header.header  # what every worker held before: the parsed per-video records
    header_bytes = tracemalloc.get_traced_memory()[0] - before
    old_per_worker = len(pickle.dumps((with_header, [(0, v["video_id"], v["nframes"], 0) for v in header["videos"]])))
    with_header.close()
    del header, with_header
    tracemalloc.stop()

    def clips_per_s() -> float:
        pick = np.random.default_rng(1)
        t = time.perf_counter()
        for _ in range(clips):
            i = int(pick.integers(len(shard_set)))
            start = int(pick.integers(0, per_video - 7 * 32))
            shard_set.frames(i, list(range(start, start + 8 * 32, 32)))
        return clips / (time.perf_counter() - t)

    cold = drop_caches()
    first = clips_per_s()
    warm = clips_per_s()
    out: dict[str, float | str] = {
        "frames": videos * per_video,
        "videos": videos,
        "shard_mb": shard.stat().st_size / 1e6,
        "write_s": write_s,
        "open_s": open_s,
        "items_in_memory_kb": set_bytes / 1e3,
        "items_pickled_kb": per_worker / 1e3,
        "before_header_in_memory_kb": header_bytes / 1e3,
        "before_pickled_kb": old_per_worker / 1e3,
        "cold_clips_per_s" if cold else "first_pass_clips_per_s": first,
        "warm_clips_per_s": warm,
        "page_cache_dropped": "yes" if cold else "no (drop_caches not permitted)",
    }
    shutil.rmtree(shard.parent)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=int, nargs="*", default=[26_000, 260_000])
    ap.add_argument("--pack", type=int, nargs="*", default=[1_000, 10_000])
    ap.add_argument("--frames", type=int, default=1 << 20, help="frames in the loading benchmark's shard (0: skip)")
    ap.add_argument("--tmp", default=None, help="scratch folder (default: a temporary folder)")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for n in args.index:
            print("index", bench_index(n, Path(tmp)), flush=True)
        for n in args.pack:
            print("pack", bench_pack(n, Path(tmp)), flush=True)
        if args.frames:
            print("loader", bench_loader(args.frames, Path(tmp)), flush=True)


if __name__ == "__main__":
    main()
