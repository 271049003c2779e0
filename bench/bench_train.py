"""Training throughput: the demo model on CPU with the real loader, and a K400 model on a GPU.

CPU (always): the demo TokShift model trained by the engine (`tokshift.engine.train`) on a
packed demo dataset through the real LMDB/JPEG loader, against a baseline measured in the
same process: the same optimizer steps on one in-memory batch (no loading at all). The ratio
says how much of the pure compute rate the full pipeline keeps.

GPU (when CUDA is available): `k400_tokshift_div4_8x32_base_224` training steps at the zoo's
per-GPU batch on synthetic clips, bf16 autocast + fused attention against fp32 (TF32 matmuls)
with eager attention (the baseline), with model FLOP utilisation (6 x MACs per clip per step, against the
GPU's dense bf16 peak).

    python bench/bench_train.py [--train-per-class 32] [--epochs 3] [--threads 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tokshift.data.transforms import normalize  # noqa: E402
from tokshift.engine.loading import build_model  # noqa: E402
from tokshift.engine.runtime import set_fused_attention  # noqa: E402
from tokshift.engine.train import TrainOptions, make_optimizer, train  # noqa: E402
from tokshift.zoo import get_config  # noqa: E402

# Dense bf16 tensor-core peaks (FLOP/s) for model FLOP utilisation.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "V100": 125e12}


def cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def build_data(root: Path, per_class: int) -> Path:
    from tokshift.data.demo import DemoConfig, generate_demo
    from tokshift.data.pack import pack_shard
    from tokshift.data.sources import build_index, write_index

    shard = root / "train.lmdb"
    if shard.exists():
        return shard
    generate_demo(root / "demo", DemoConfig(train_per_class=per_class, val_per_class=1), progress=False)
    index = root / "train.csv"
    write_index(build_index({"kind": "demo", "root": str(root / "demo")}, "train", 1), index)
    pack_shard(index, 0, shard, root / "failures.csv", short_side=64, progress=False)
    return shard


def enable_tf32() -> None:
    """fp32 matmuls and convolutions on TF32 tensor cores: the fair fp32 baseline on a GPU.

    Without it the bf16 speed-up would be measured against plain fp32 and look larger than what
    a user switching from a TF32 run gains.
    """
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def make_train_step(
    model_name: str,
    batch: int,
    device: torch.device,
    amp: torch.dtype | None,
    fused: bool,
    compile: bool = False,
) -> Callable[[], None]:
    """One optimizer step (forward, loss, backward, grad-norm clip, step) on a fixed batch on `device`."""
    cfg = get_config(model_name)
    torch.manual_seed(0)
    with device:  # random init where the model runs: a ViT-L is built in a second on a GPU
        model = build_model(cfg.model_dict()).train()
    set_fused_attention(model, fused)
    opt = make_optimizer(model, cfg, 1e-4)
    forward = torch.compile(model) if compile else model
    x = torch.randint(0, 256, (batch, cfg.num_frames, 3, cfg.img_size, cfg.img_size), dtype=torch.uint8, device=device)
    y = torch.randint(0, cfg.num_classes, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = forward(normalize(x))
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_steps(step: Callable[[], None], steps: int, device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of `steps` calls of `step`, the device drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, c0 = time.perf_counter(), cpu_seconds()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, cpu_seconds() - c0


def compute_only(
    model_name: str, batch: int, steps: int, device: torch.device, amp: torch.dtype | None, fused: bool
) -> dict[str, float]:
    """Optimizer steps on one fixed batch already on the device: the no-loading upper bound."""
    step = make_train_step(model_name, batch, device, amp, fused)
    time_steps(step, 3, device)  # warm-up: allocator, kernel selection, optimizer state
    wall, cpu = time_steps(step, steps, device)
    return {"clips_per_s": batch * steps / wall, "clips_per_cpu_s": batch * steps / max(cpu, 1e-9)}


def engine_run(shard: Path, epochs: int, workers: int, batch: int) -> dict[str, float]:
    """The real thing: `tokshift train` (in-process) over the packed shard."""
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), cpu_seconds()
        rc = train(
            TrainOptions(
                model="demo_tokshift",
                train_shards=[str(shard)],
                val_shards=[],
                out_dir=Path(tmp),
                overrides={"epochs": epochs, "batch_size": batch},
                workers=workers,
                log_every=10**9,
                progress=False,
                checkpoint_minutes=1e9,
            )
        )
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        assert rc == 0
        summary = json.loads((Path(tmp) / "train_summary.json").read_text())
        recs = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    clips = summary["train_clips"] // batch * batch * epochs
    steady = [r for r in recs if r["kind"] == "step" and r["epoch"] > 1]
    steady_rate = sum(r["clips_per_s"] for r in steady) / len(steady) if steady else float("nan")
    return {
        "clips_per_s": clips / wall,
        "clips_per_cpu_s": clips / max(cpu, 1e-9),
        "steady_clips_per_s": steady_rate,
        "train_s": summary["train_hours"] * 3600,
        "wall_s": wall,
    }


def gpu_section(steps: int) -> list[str]:
    name = "k400_tokshift_div4_8x32_base_224"
    cfg = get_config(name)
    from tokshift.flops import model_cost

    macs = model_cost(cfg).macs
    dev = torch.device("cuda")
    enable_tf32()
    gpu = torch.cuda.get_device_name(dev)
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    rows = [
        f"GPU: {gpu}; model {name}, per-GPU batch {cfg.batch_size}, {macs / 1e9:.1f} GMACs per clip",
        "",
        "| mode | clips/s | step ms | MFU (vs dense bf16 peak) | vs fp32 (TF32) eager |",
        "|---|---|---|---|---|",
    ]
    base = None
    for label, amp, fused in (
        ("fp32 (TF32) eager attention [baseline]", None, False),
        ("bf16 autocast + fused attention", torch.bfloat16, True),
    ):
        r = compute_only(name, cfg.batch_size, steps, dev, amp, fused)
        base = base or r["clips_per_s"]
        mfu = 6 * macs * r["clips_per_s"] / peak if peak else float("nan")
        rows.append(
            f"| {label} | {r['clips_per_s']:.1f} | {1000 * cfg.batch_size / r['clips_per_s']:.0f} | "
            f"{100 * mfu:.1f}% | {r['clips_per_s'] / base:.2f}x |"
        )
        print(rows[-1], flush=True)
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-per-class", type=int, default=32, help="demo clips per class (4 classes)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data", type=Path, default=None, help="reuse/keep the packed demo data here")
    ap.add_argument("--gpu-steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-cpu", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, torch {torch.__version__}, "
        f"{args.threads} threads, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    lines = []
    if not args.skip_cpu:
        data = args.data or Path(tempfile.mkdtemp(prefix="bench_train_"))
        shard = build_data(data, args.train_per_class)
        n = args.train_per_class * 4
        steps = max(10, n // args.batch)
        runs: dict[str, list[dict[str, float]]] = {}
        names = ["compute only, one in-memory batch [baseline]"] + [
            f"tokshift train, real loader, {w} workers" for w in sorted({args.workers, 0}, reverse=True)
        ]
        for r in range(args.rounds):  # interleaved, order alternating, medians reported
            for name in names if r % 2 == 0 else names[::-1]:
                if name.startswith("compute"):
                    res = compute_only("demo_tokshift", args.batch, steps, torch.device("cpu"), None, True)
                else:
                    res = engine_run(shard, args.epochs, int(name.split(", ")[-1].split()[0]), args.batch)
                runs.setdefault(name, []).append(res)
                print(f"round {r + 1}: {name}: {res}", flush=True)

        def med(name: str, key: str) -> float:
            return statistics.median(x[key] for x in runs[name])

        base = med(names[0], "clips_per_cpu_s")
        lines += [
            f"demo_tokshift, {n} training clips (8 x 64 x 64), batch {args.batch}, {args.epochs} epochs, "
            f"{args.threads} threads, median of {args.rounds} interleaved rounds",
            "",
            "| run | clips/s (wall) | clips/s (steady epochs) | clips per CPU-second | vs baseline (CPU-s) |",
            "|---|---|---|---|---|",
        ]
        for name in names:
            steady = f"{med(name, 'steady_clips_per_s'):.1f}" if "steady_clips_per_s" in runs[name][0] else "-"
            lines.append(
                f"| {name} | {med(name, 'clips_per_s'):.1f} | {steady} | {med(name, 'clips_per_cpu_s'):.1f}"
                f" | {med(name, 'clips_per_cpu_s') / base:.2f}x |"
            )
    if torch.cuda.is_available():
        lines += [""] + gpu_section(args.gpu_steps)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
