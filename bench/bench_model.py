"""Forward+backward cost of TokShift against the plain ViT, same process, same input.

    python bench/bench_model.py [--threads 2] [--rounds 10] [--depth N] [--models A B] [--checkpointing]
    python bench/bench_model.py --memory-only --checkpointing --models A B C

Prints seconds per iteration (median and best over the rounds; each round times every
model once, so drifting machine load hits all alike) and the median's ratio against the
first model (the baseline). `--depth N` keeps only N blocks of each model: the shift costs
the same share of every block, so a shallow model gives the same ratios in less time.
The shift touches only the [CLS] token, so TokShift should cost within a few percent of
the ViT it is built on. Each TokShift model is also timed with the former
in-place first shift ("in-place"), which activation checkpointing cannot run; with
`--checkpointing`, every model is also timed with activation checkpointing on ("ckpt").
The token shift alone is timed last, against the alternatives for its out-of-place form.
Also printed: the tensors each model keeps for its backward pass (one clip, bf16 autocast as
in GPU training), counted with saved-tensor hooks, so independent of the machine's load;
`--memory-only` prints only that, for models of any size and input.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import tokshift.models
from tokshift.engine.loading import build_model
from tokshift.models import VideoVisionTransformer, resolve_model_config, token_shift, token_shift_


@contextlib.contextmanager
def in_place_first_shift(enabled: bool) -> Iterator[None]:
    """TokShiftBlock as it was before activation checkpointing: both shifts in place."""
    saved = tokshift.models.token_shift
    if enabled:
        tokshift.models.token_shift = token_shift_
    try:
        yield
    finally:
        tokshift.models.token_shift = saved


@dataclass
class Variant:
    label: str
    model: torch.nn.Module
    in_place: bool = False


def _model(name: str, depth: int | None) -> VideoVisionTransformer:
    torch.manual_seed(0)
    if depth is None:
        return build_model(name).train()
    return VideoVisionTransformer.from_config({**resolve_model_config(name), "depth": depth}).train()


def variants(names: list[str], checkpointing: bool, depth: int | None) -> list[Variant]:
    out = []
    for name in names:
        model = _model(name, depth)
        out.append(Variant(name, model))
        if model.arch == "tokshift":
            out.append(Variant(f"{name} in-place", model, in_place=True))
        if checkpointing:
            ck = _model(name, depth)
            ck.set_grad_checkpointing(True)
            out.append(Variant(f"{name} ckpt", ck))
    return out


def time_fwd_bwd(v: Variant, x: torch.Tensor) -> float:
    with in_place_first_shift(v.in_place):
        v.model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        v.model(x).sum().backward()
        return time.perf_counter() - t0


def saved_for_backward(v: Variant, x: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps from one forward pass under bf16 autocast."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with (
        in_place_first_shift(v.in_place),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast(x.device.type, dtype=torch.bfloat16),
    ):
        v.model(x)
    return sum(storages.values())


def _shift_cat(x: torch.Tensor, num_frames: int, shift_div: int) -> torch.Tensor:
    """Out of place by concatenating a new [CLS] token with the untouched patch tokens."""
    bt, _, dim = x.shape
    fold = dim // shift_div
    cls = x[:, 0].reshape(bt // num_frames, num_frames, dim)
    nxt = F.pad(cls[:, 1:, :fold], (0, 0, 0, 1))
    prv = F.pad(cls[:, :-1, fold : 2 * fold], (0, 0, 1, 0))
    new_cls = torch.cat([nxt, prv, cls[..., 2 * fold :]], -1).view(bt, 1, dim)
    return torch.cat([new_cls, x[:, 1:]], 1)


SHIFTS: dict[str, Callable[[torch.Tensor, int, int], torch.Tensor]] = {
    "in place (token_shift_)": token_shift_,
    "clone + in place (token_shift)": token_shift,
    "cat of new [CLS] + patch tokens": _shift_cat,
}


def time_shifts(num_frames: int, tokens: int, dim: int, repeats: int = 200) -> dict[str, tuple[float, float]]:
    """Seconds for one token shift (forward + backward, forward under no_grad) on a
    (num_frames, tokens, dim) tensor, minus the same pass without the shift; interleaved."""
    x0 = torch.randn(num_frames, tokens, dim)
    g = torch.randn(num_frames, tokens, dim)
    fns = {**SHIFTS, "none": lambda x, t, d: x}

    def fwd_bwd(fn: Callable) -> float:
        x = x0.clone().requires_grad_(True)
        t0 = time.perf_counter()
        fn(x * 1.0, num_frames, 4).backward(g)  # x * 1.0 stands in for the previous block's output
        return time.perf_counter() - t0

    def fwd(fn: Callable) -> float:
        x = x0.clone()
        with torch.no_grad():
            t0 = time.perf_counter()
            fn(x, num_frames, 4)
            return time.perf_counter() - t0

    out = {}
    for kind, run in (("fwd_bwd", fwd_bwd), ("fwd", fwd)):
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(repeats):
            for k, fn in fns.items():
                times[k].append(run(fn))
        base = statistics.median(times["none"])
        for k in SHIFTS:
            out.setdefault(k, (0.0, 0.0))
            got = max(statistics.median(times[k]) - base, 0.0)
            out[k] = (got, out[k][1]) if kind == "fwd_bwd" else (out[k][0], got)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["k400_vit_8x32_224", "k400_tokshift_div4_8x32_base_224"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--depth", type=int, default=None, help="blocks per model (default: the zoo's)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--checkpointing", action="store_true", help="also time each model with activation checkpointing")
    ap.add_argument("--memory-only", action="store_true", help="only count what each model keeps for backward")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_only:
        for v in variants(args.models, args.checkpointing, args.depth):
            clip = torch.randn(1, v.model.num_frames, 3, v.model.img_size, v.model.img_size)
            print(f"{v.label:45s} kept for backward {saved_for_backward(v, clip) / 2**20:6.0f} MiB/clip", flush=True)
        return
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, batch {args.batch}, {args.rounds} rounds, depth {args.depth or 'as zoo'}"
    )
    runs = variants(args.models, args.checkpointing, args.depth)
    m0 = runs[0].model
    x = torch.randn(args.batch, m0.num_frames, 3, m0.img_size, m0.img_size)
    for v in runs:
        time_fwd_bwd(v, x)  # warm-up
    results: dict[str, list[float]] = {v.label: [] for v in runs}
    for _ in range(args.rounds):
        for v in runs:
            results[v.label].append(time_fwd_bwd(v, x))
    base = statistics.median(results[runs[0].label])
    for v in runs:
        t = statistics.median(results[v.label])
        saved = saved_for_backward(v, x[:1]) / 2**20
        print(
            f"{v.label:45s} {t:8.3f} s/iter (best {min(results[v.label]):.3f})  ratio {t / base:6.3f}  "
            f"kept for backward {saved:6.0f} MiB/clip"
        )
    # Whole-model timings on a shared CPU move by a few percent between runs; the shift's own
    # cost, isolated, is what TokShift adds: one out-of-place and one in-place shift per block.
    from tokshift.zoo import get_config

    cfg = get_config(args.models[-1])
    depth = args.depth or cfg.depth
    tokens = (cfg.img_size // cfg.patch_size) ** 2 + 1
    shifts = time_shifts(cfg.num_frames * args.batch, tokens, cfg.embed_dim)
    for k, (fb, fw) in shifts.items():
        print(f"shift {k:32s} {fb * 1e3:6.3f} ms fwd+bwd, {fw * 1e3:6.3f} ms fwd (no_grad) per call")
    added = depth * (shifts["clone + in place (token_shift)"][0] + shifts["in place (token_shift_)"][0])
    print(
        f"TokShift adds {depth} x (token_shift + token_shift_) = {added * 1e3:.0f} ms fwd+bwd "
        f"= {100 * added / base:.1f}% of the baseline iteration"
    )


if __name__ == "__main__":
    main()
