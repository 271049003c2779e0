"""Forward+backward cost of TokShift against the plain ViT, same process, same input.

    python bench/bench_model.py [--threads 2] [--repeats 5] [--models A B]

Prints seconds per iteration (median) for each model and the ratio against the
first (the baseline). The shift touches only the [CLS] token, so TokShift should
cost within a few percent of the ViT it is built on.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from tokshift.models import build_model


def time_fwd_bwd(name: str, repeats: int, batch: int) -> float:
    torch.manual_seed(0)
    model = build_model(name).train()
    x = torch.randn(batch, model.num_frames, 3, model.img_size, model.img_size)
    model(x).sum().backward()  # warm-up
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        model(x).sum().backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["k400_vit_8x32_224", "k400_tokshift_div4_8x32_base_224"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, batch {args.batch}, median of {args.repeats}")
    # Interleave the models so drifting machine load hits both alike.
    results: dict[str, list[float]] = {m: [] for m in args.models}
    for _ in range(2):
        for m in args.models:
            results[m].append(time_fwd_bwd(m, args.repeats, args.batch))
    base = min(results[args.models[0]])
    for m in args.models:
        t = min(results[m])
        print(f"{m:40s} {t:8.3f} s/iter  ratio {t / base:6.3f}")


if __name__ == "__main__":
    main()
