"""The packed loader against decoding the videos at training time (PyAV, decord, torchcodec).

Every loader does the same work per sample and returns the same uint8 tensors:

* a training clip: 8 frames at stride 32 from a random start, short side resized to a random
  value in [224, 330], random 224 crop, flip and colour jitters (`tokshift.data.transforms.ClipAugment`,
  the packed loader's own augmentation, applied to the decoded frames);
* a 30-view evaluation sample: 10 uniformly spaced clips x 3 crops, short side 224
  (`tokshift.data.datasets.eval_views_from_frames`), each needed frame decoded once.

The decoders open the file for every sample (as a Dataset's `__getitem__` does) and use one
decoding thread (one DataLoader worker's share): PyAV decodes from the start of the file up to
the last frame needed, converting only the needed frames; decord, as video codebases commonly use it,
`VideoReader(path).get_batch(indices)`; torchcodec `VideoDecoder(path).get_frames_at(indices)`.
The packed loader is `TrainClipDataset` / `EvalViewDataset` over `tokshift pack` shards (short
side 331, JPEG q90) of the same videos.

Inputs, generated here with ffmpeg (textured, moving content; H.264, libx264 defaults for the
GOP, i.e. one keyframe per 250 frames, as Kinetics clips cut and re-encoded by ffmpeg):
Kinetics-like 340x256, a 720p variant, and the 720p videos pre-resized to short side 320
(`ffmpeg -vf scale=-2:320`).

Reports CPU milliseconds per sample (user + system time of the process, all threads, and its
children; median of interleaved rounds, order alternating), its ratio to the packed loader
measured in the same process, disk bytes per video, and the CPU cores that keep one GPU fed at
the GPU rates measured by bench_gpu.py (bench/RESULTS_gpu.md), or stated assumptions.

    nice -n 10 python bench/bench_decoders.py [--videos 4] [--rounds 3] [--out bench/RESULTS_data.md]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_gpu import read_rates, replace_section  # noqa: E402
from bench_pack import machine, make_sources  # noqa: E402

from tokshift.data.datasets import EvalViewDataset, TrainClipDataset, eval_views_from_frames  # noqa: E402
from tokshift.data.ffmpeg import ffmpeg_executable  # noqa: E402
from tokshift.data.pack import pack_rows  # noqa: E402
from tokshift.data.sampling import eval_clip_indices, train_clip_indices  # noqa: E402
from tokshift.data.sources import IndexRow  # noqa: E402
from tokshift.data.store import ShardReader  # noqa: E402
from tokshift.data.transforms import ClipAugment  # noqa: E402

T, STRIDE, CROP, SHORT = 8, 32, 224, (224, 330)
PACK_SHORT, PACK_QUALITY = 331, 90
#: Per-GPU rates used when bench/RESULTS_gpu.md has no measured ones (ViT-B 8x224 on an H100, bf16).
ASSUMED_RATES = {"train_clips_per_s": 60.0, "eval_videos_per_s": 10.0}
HEADING = "Decoding at training time vs the packed loader (bench_decoders.py)"


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


# --------------------------------------------------------------------------- decoders
# Each returns (frame count, decode) where decode(indices) -> list of (H, W, 3) uint8 frames.


def open_pyav(path: Path) -> tuple[int, Callable[[Sequence[int]], list[np.ndarray]]]:
    import av

    container = av.open(str(path))
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1
    n = stream.frames

    def decode(indices: Sequence[int]) -> list[np.ndarray]:
        want, last, got = set(indices), max(indices), {}
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i in want:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
        finally:
            container.close()
        return [got[i] for i in indices]

    return n, decode


def open_decord(path: Path) -> tuple[int, Callable[[Sequence[int]], list[np.ndarray]]]:
    import decord

    vr = decord.VideoReader(str(path), num_threads=1)

    def decode(indices: Sequence[int]) -> list[np.ndarray]:
        return list(vr.get_batch(list(indices)).asnumpy())

    return len(vr), decode


def open_torchcodec(path: Path) -> tuple[int, Callable[[Sequence[int]], list[np.ndarray]]]:
    from torchcodec.decoders import VideoDecoder

    dec = VideoDecoder(str(path), num_ffmpeg_threads=1)

    def decode(indices: Sequence[int]) -> list[np.ndarray]:
        return list(dec.get_frames_at(list(indices)).data.permute(0, 2, 3, 1).contiguous().numpy())

    return int(dec.metadata.num_frames), decode


DECODERS = {"PyAV": open_pyav, "decord": open_decord, "torchcodec": open_torchcodec}
DISTRIBUTIONS = {"PyAV": "av", "decord": "decord", "torchcodec": "torchcodec"}


class _Frames:
    """Decoded frames by index, looking like a whole video to `eval_views_from_frames`."""

    def __init__(self, n: int, frames: dict[int, np.ndarray]) -> None:
        self.n, self.frames = n, frames

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        return self.frames[i]


def decoded_train(opener: Callable[..., Any], paths: list[Path]) -> Callable[[int, int], torch.Tensor]:
    augment = ClipAugment(CROP, SHORT)

    def get(i: int, epoch: int) -> torch.Tensor:
        n, decode = opener(paths[i % len(paths)])
        rng = np.random.default_rng([0, epoch, i])
        indices = train_clip_indices(n, T, STRIDE, rng).tolist()
        clip = augment(decode(indices), rng)
        return torch.from_numpy(np.ascontiguousarray(clip.transpose(0, 3, 1, 2)))

    return get


def decoded_eval(opener: Callable[..., Any], paths: list[Path]) -> Callable[[int, int], torch.Tensor]:
    def get(i: int, epoch: int) -> torch.Tensor:
        n, decode = opener(paths[i % len(paths)])
        unique = sorted({int(j) for c in eval_clip_indices(n, T, STRIDE, 10) for j in c})
        return eval_views_from_frames(_Frames(n, dict(zip(unique, decode(unique)))), T, STRIDE, CROP)

    return get


def packed_train(shard: Path) -> Callable[[int, int], torch.Tensor]:
    ds = TrainClipDataset([shard], T, STRIDE, CROP, SHORT)

    def get(i: int, epoch: int) -> torch.Tensor:
        ds.set_epoch(epoch)
        return ds[i % len(ds)][0]

    return get


def packed_eval(shard: Path) -> Callable[[int, int], torch.Tensor]:
    ds = EvalViewDataset([shard], T, STRIDE, CROP)
    return lambda i, epoch: ds[i % len(ds)]["views"]


# --------------------------------------------------------------------------- inputs


def resize_copy(src: Path, dst: Path, short: int) -> Path:
    """`ffmpeg -vf scale=-2:short`, H.264 (libx264 veryfast, CRF 23, default GOP), as users pre-resize Kinetics."""
    cmd = [ffmpeg_executable(), "-loglevel", "error", "-y", "-i", str(src), "-vf", f"scale=-2:{short}"]
    cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-threads", "1", str(dst)]
    subprocess.run(cmd, check=True)
    return dst


def pack(paths: list[Path], out: Path) -> Path:
    rows = [IndexRow(p.stem, str(p), "x", 0, "train", 0) for p in paths]
    pack_rows(rows, ["x"], out, out.with_suffix(".failures.csv"), short_side=PACK_SHORT, jpeg_quality=PACK_QUALITY,
              workers=1, progress=False)  # fmt: skip
    return out


def versions() -> str:
    out = []
    for label, dist in DISTRIBUTIONS.items():
        try:
            out.append(f"{label} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{label} not installed")
    try:
        import av

        out[0] += f" (bundled libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))})"
    except Exception:  # noqa: BLE001
        pass
    return ", ".join(out)


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=4, help="videos per input kind")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clips", type=int, default=0, help="training clips per round and loader; 0: one per video")
    ap.add_argument(
        "--eval-samples", type=int, default=0, help="30-view samples per round and loader; 0: one per video"
    )
    ap.add_argument("--decoders", default=",".join(DECODERS), help="comma-separated subset of " + ",".join(DECODERS))
    ap.add_argument("--kinds", default="340x256,720p,720p->320p", help="input kinds to run")
    ap.add_argument("--gpu-results", type=Path, default=BENCH / "RESULTS_gpu.md")
    ap.add_argument("--out", type=Path, default=None, help="also write the section into this Markdown file")
    args = ap.parse_args()
    # Every round visits the same videos for every loader and task: the generated videos differ
    # in noise, hence in bitrate and decoding cost.
    args.clips = args.clips or args.videos
    args.eval_samples = args.eval_samples or args.videos
    torch.set_num_threads(1)
    decoders, skipped = {}, []
    for name in args.decoders.split(","):
        if name not in DECODERS:
            sys.exit(f"bench_decoders.py: error: --decoders {name!r}: expected some of {', '.join(DECODERS)}")
        decoders[name] = DECODERS[name]
    rates = read_rates(args.gpu_results)
    measured = "train_clips_per_s" in rates
    rates = {**ASSUMED_RATES, **{k: v for k, v in rates.items() if k in ASSUMED_RATES}}
    load0 = os.getloadavg()[0]
    t_start = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="bench_decoders_") as tmp:
        root = Path(tmp)
        kinds: dict[str, tuple[list[Path], Path]] = {}  # kind -> (videos, packed shard of the originals)
        wanted = args.kinds.split(",")
        if "340x256" in wanted:
            (root / "k").mkdir()
            videos = make_sources(root / "k", args.videos, args.seconds)
            kinds["340x256"] = (videos, pack(videos, root / "k.lmdb"))
        if "720p" in wanted or "720p->320p" in wanted:
            (root / "hd").mkdir()
            hd = make_sources(root / "hd", args.videos, args.seconds, size="1280x720")
            shard = pack(hd, root / "hd.lmdb")
            if "720p" in wanted:
                kinds["720p"] = (hd, shard)
            if "720p->320p" in wanted:
                (root / "320").mkdir()
                kinds["720p->320p"] = ([resize_copy(p, root / "320" / p.name, 320) for p in hd], shard)
        print(f"inputs ready in {time.perf_counter() - t_start:.0f} s", flush=True)
        first = next(iter(kinds.values()))[0][0]
        for name, opener in list(decoders.items()):
            try:  # a decoder that does not load or decode here is reported, not fatal
                n, decode = opener(first)
                assert n > 0 and decode([0])[0].ndim == 3
            except Exception as e:  # noqa: BLE001
                reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
                skipped.append(f"{name} skipped ({type(e).__name__}: {reason})")
                print(skipped[-1], file=sys.stderr, flush=True)
                del decoders[name]

        results: list[dict[str, Any]] = []
        for kind, (videos, shard) in kinds.items():
            loaders: dict[str, dict[str, Callable[[int, int], torch.Tensor]]] = {
                "packed (LMDB/JPEG)": {"train": packed_train(shard), "eval": packed_eval(shard)}
            }
            for name, opener in decoders.items():
                loaders[name] = {"train": decoded_train(opener, videos), "eval": decoded_eval(opener, videos)}
            for ld in loaders.values():  # warm imports, page cache, shapes
                assert ld["train"](0, 99).shape == (T, 3, CROP, CROP)
                assert ld["eval"](0, 99).shape == (30, T, 3, CROP, CROP)
            cpu: dict[tuple[str, str], list[float]] = {}
            for r in range(args.rounds):
                for name in list(loaders) if r % 2 == 0 else list(loaders)[::-1]:
                    for task, count in (("train", args.clips), ("eval", args.eval_samples)):
                        c0 = cpu_seconds()
                        for k in range(count):
                            loaders[name][task](r * count + k, r)
                        cpu.setdefault((name, task), []).append((cpu_seconds() - c0) / count)
            disk_mp4 = sum(p.stat().st_size for p in videos) / len(videos)
            reader = ShardReader(shard)
            metas = list(reader.videos())
            disk_packed = shard.stat().st_size / len(metas)
            packed = "packed (LMDB/JPEG)"
            for name in loaders:
                row = {"kind": kind, "loader": name}
                for task in ("train", "eval"):
                    row[task] = statistics.median(cpu[(name, task)])
                    # The ratio to the packed loader within each round (same videos, same moment), then the median.
                    row[task + "_ratio"] = statistics.median(
                        a / b for a, b in zip(cpu[(name, task)], cpu[(packed, task)])
                    )
                    row[task + "_all"] = cpu[(name, task)]
                row["disk"] = disk_packed if name.startswith("packed") else disk_mp4
                row["frames"] = f"{metas[0]['width']}x{metas[0]['height']}" if name.startswith("packed") else ""
                results.append(row)
                print(
                    f"{kind:12s} {name:20s} train {1000 * row['train']:7.1f} ms ({row['train_ratio']:5.1f}x)  "
                    f"eval {1000 * row['eval']:7.1f} ms ({row['eval_ratio']:5.1f}x)  disk {row['disk'] / 1e6:.2f} MB",
                    flush=True,
                )
            mp4_meta = probe(videos[0])
            for row in results:
                if row["kind"] == kind and not row["frames"]:
                    row["frames"] = mp4_meta

    wall = time.perf_counter() - t_start
    rate_note = (
        f"measured by bench_gpu.py in {args.gpu_results.name}" if measured else "assumed (no GPU rates measured yet)"
    )
    lines = [
        f"Reproduce with `nice -n 10 python bench/bench_decoders.py --out bench/RESULTS_data.md` (decoders from "
        f"`pip install -e '.[bench]'`). Machine: {machine()}; {versions()}; ffmpeg for the inputs and packing: "
        f"{Path(ffmpeg_executable()).name}. Load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the "
        f"end; {wall / 60:.1f} minutes in all. One process, one decoding thread (one DataLoader worker's share).",
        "",
        f"{args.videos} videos per input (a textured test pattern with temporal noise of strength 8-12, which "
        f"sets their bitrate), {args.seconds:g} s at 30 fps, H.264 (libx264 veryfast, CRF 23, default GOP of 250 "
        f"frames). Packed: `tokshift pack` of the original videos (short side {PACK_SHORT}, JPEG q{PACK_QUALITY}); "
        "the 320p copies are compared with the packed 720p originals (what a user would pack from them). CPU time "
        f"per sample: median of {args.rounds} interleaved rounds (order alternating) of {args.clips} training clips "
        f"and {args.eval_samples} 30-view samples per loader (each video once per task and round); the ratio is the "
        "median of the per-round ratios. Cores per GPU = CPU seconds per sample x the GPU rate: "
        f"{rates['train_clips_per_s']:g} training clips/s and {rates['eval_videos_per_s']:g} evaluated videos/s per "
        f"GPU (ViT-B 8x224, bf16; {rate_note}).",
        "",
        "| input | loader | frames stored | train: CPU ms per clip | vs packed | eval: CPU ms per 30-view sample "
        "| vs packed | disk per video (MB) | cores per GPU (train) | cores per GPU (eval) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results:
        lines.append(
            f"| {row['kind']} | {row['loader']} | {row['frames']} | {1000 * row['train']:.1f} | "
            f"**{row['train_ratio']:.1f}x** | {1000 * row['eval']:.0f} | **{row['eval_ratio']:.1f}x** | "
            f"{row['disk'] / 1e6:.2f} | {row['train'] * rates['train_clips_per_s']:.1f} | "
            f"{row['eval'] * rates['eval_videos_per_s']:.1f} |"
        )
    if skipped:
        lines += ["", *(f"- {s}" for s in skipped)]
    lines += ["", "Disk: packed share / mp4 per video:"]
    for kind in dict.fromkeys(r["kind"] for r in results):
        rows = [r for r in results if r["kind"] == kind]
        packed = next(r for r in rows if r["loader"].startswith("packed"))
        mp4 = next((r for r in rows if not r["loader"].startswith("packed")), None)
        if mp4:
            ratio = packed["disk"] / mp4["disk"]
            lines.append(f"- {kind}: {ratio:.1f}x ({packed['disk'] / 1e6:.2f} MB vs {mp4['disk'] / 1e6:.2f} MB)")
    print("\n".join(lines))
    if args.out:
        replace_section(args.out, HEADING, lines, "Data pipeline benchmarks")
        print(f"wrote the section into {args.out}")


def probe(path: Path) -> str:
    """'WxH, N kbit/s' of a video, from PyAV when it is there."""
    try:
        import av

        with av.open(str(path)) as c:
            s = c.streams.video[0]
            return f"{s.width}x{s.height} H.264, {8 * path.stat().st_size / float(c.duration / 1e6) / 1e3:.0f} kbit/s"
    except Exception:  # noqa: BLE001
        return "H.264"


if __name__ == "__main__":
    main()
