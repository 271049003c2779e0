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

from tokshift.engine.loading import build_model


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


def time_shift(num_frames: int, tokens: int, dim: int, repeats: int = 30) -> float:
    """Seconds for one token shift, forward + backward, on a (num_frames, tokens, dim) tensor."""
    from tokshift.models import token_shift_

    x0 = torch.randn(num_frames, tokens, dim)
    times = []
    for _ in range(repeats):
        x = x0.clone().requires_grad_(True)
        t0 = time.perf_counter()
        token_shift_(x * 1.0, num_frames, 4).sum().backward()
        times.append(time.perf_counter() - t0)
    base = []
    for _ in range(repeats):
        x = x0.clone().requires_grad_(True)
        t0 = time.perf_counter()
        (x * 1.0).sum().backward()
        base.append(time.perf_counter() - t0)
    return max(statistics.median(times) - statistics.median(base), 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["k400_vit_8x32_224", "k400_tokshift_div4_8x32_base_224"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, batch {args.batch}, median of {args.repeats}"
    )
    # Interleave the models so drifting machine load hits both alike.
    results: dict[str, list[float]] = {m: [] for m in args.models}
    for _ in range(2):
        for m in args.models:
            results[m].append(time_fwd_bwd(m, args.repeats, args.batch))
    base = min(results[args.models[0]])
    for m in args.models:
        t = min(results[m])
        print(f"{m:40s} {t:8.3f} s/iter  ratio {t / base:6.3f}")
    # Whole-model timings on a shared CPU move by a few percent between runs; the shift's own
    # cost, isolated, is what TokShift adds: two shifts per block.
    from tokshift.zoo import get_config

    cfg = get_config(args.models[-1])
    tokens = (cfg.img_size // cfg.patch_size) ** 2 + 1
    shift = time_shift(cfg.num_frames * args.batch, tokens, cfg.embed_dim)
    added = 2 * cfg.depth * shift
    print(
        f"token shift alone: {shift * 1e3:.2f} ms fwd+bwd per call, x{2 * cfg.depth} calls = "
        f"{added * 1e3:.0f} ms = {100 * added / base:.1f}% of the baseline iteration"
    )


if __name__ == "__main__":
    main()
