"""What the faithful evaluation mode costs the loader: CPU time per 30-view sample, fast against faithful.

Fast mode: libjpeg-turbo's fast IDCT and upsampling, OpenCV bilinear resize (the defaults for
trained models). Faithful mode: both fast paths off (Pillow's decode), antialiased bicubic resize,
the original's clip starts and portrait crops (the default for released checkpoints). Each sample
is `EvalViewDataset.__getitem__` over a real LMDB shard: every needed frame read, checked,
decoded, resized and cropped into 10 clips x 3 crops of 8 frames at stride 32, crop 224, from
videos of 300 frames at short side 331 (4:3, JPEG q90), as `tokshift pack` stores Kinetics.

Reports CPU milliseconds per sample (user + system of this process, one thread), median of
interleaved rounds, and the faithful/fast ratio measured in the same process; also the decode
alone, per frame.

    nice -n 10 python bench/bench_faithful.py [--videos 4] [--rounds 5] [--out bench/RESULTS_faithful.md]
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tokshift.data.datasets import EvalViewDataset
from tokshift.data.jpeg import decode_rgb, encode_rgb
from tokshift.data.store import ShardWriter
from tokshift.provenance import cpu_model

FRAMES, H, W = 300, 331, 441


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _frames(n: int, seed: int) -> list[bytes]:
    """Textured, moving content (gradients, edges, noise) encoded as the packer stores it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    texture = rng.normal(0, 18, (H, W, 3)).astype(np.float32)
    out = []
    for t in range(n):
        base = np.stack([xx * 0.5 + t, yy * 0.6 + 20, (xx + yy) * 0.3 + 2 * t], axis=-1)
        edges = (((xx + 3 * t) % 41) < 20)[..., None] * 50
        out.append(encode_rgb(np.clip(base + edges + np.roll(texture, t, axis=1), 0, 255).astype(np.uint8), 90))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "shard-0.lmdb"
        jpegs = []
        with ShardWriter(shard, ["a"]) as writer:
            for v in range(args.videos):
                frames = _frames(FRAMES, seed=v)
                jpegs += frames[:20]
                meta = {"label": "a", "label_index": 0, "fps": 25.0, "width": W, "height": H}
                writer.add_video(f"v{v}", frames, meta)
            writer.finish()
        modes = {
            "fast": EvalViewDataset([shard], 8, 32, 224, 10, 3, resize="linear"),
            "faithful": EvalViewDataset([shard], 8, 32, 224, 10, 3, resize="bicubic", faithful=True),
        }
        per_sample: dict[str, list[float]] = {m: [] for m in modes}
        per_frame: dict[str, list[float]] = {"fast": [], "accurate": []}
        for r in range(args.rounds):
            order = list(modes) if r % 2 == 0 else list(reversed(modes))
            for mode in order:
                t0 = _cpu()
                for i in range(len(modes[mode])):
                    modes[mode][i]
                per_sample[mode].append((_cpu() - t0) / len(modes[mode]) * 1e3)
            for accurate, name in ((False, "fast"), (True, "accurate")):
                t0 = _cpu()
                for blob in jpegs:
                    decode_rgb(blob, accurate)
                per_frame[name].append((_cpu() - t0) / len(jpegs) * 1e3)
    fast, faithful = (statistics.median(per_sample[m]) for m in ("fast", "faithful"))
    dfast, dacc = (statistics.median(per_frame[m]) for m in ("fast", "accurate"))
    lines = [
        "# Faithful evaluation: loader cost",
        "",
        f"Machine: {cpu_model()}, {platform.system()}, torch {torch.__version__},"
        f" one thread; {time.strftime('%Y-%m-%d')}; `python bench/bench_faithful.py --videos {args.videos}"
        f" --rounds {args.rounds}`.",
        "",
        "| what | fast | faithful | faithful / fast |",
        "|---|---|---|---|",
        f"| 30-view sample (10 clips x 3 crops, 8x224, from 331-px frames), CPU ms | {fast:.1f} | {faithful:.1f} |"
        f" {faithful / fast:.2f} |",
        f"| JPEG decode of one 441x331 frame, CPU ms | {dfast:.2f} | {dacc:.2f} | {dacc / dfast:.2f} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
