"""One short job of a train or evaluate shape: does the cluster path work, and how fast is it?

Run with the same launcher, resources and settings as the model's real job (rules/preflight.smk),
so it meets the same GPUs, nodes, network and disks. It measures, in about a minute:

- the devices: CUDA usable on every allocated GPU, driver and torch builds, bf16;
- an all-reduce across every rank (NCCL on GPUs, gloo on CPUs): correct sum and bandwidth;
- train: optimizer steps of the real model at its configured per-process batch and accumulation
  on synthetic clips (no data needed): seconds per optimizer step and peak memory;
- evaluate: one 30-view video batch: seconds per video;
- the packed shards where they exist: clips per second read and decoded by one loader process;
- the free space at `frames.stage_to` against the shards' size.

A failed check is a result, not a crash: a job whose GPUs CUDA cannot use writes its report with
that check failed and exits 0, so the preflight report names every problem at once.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Check", "ProbeOptions", "run_probe"]


@dataclass
class Check:
    """One check's outcome; `fix` says what to do when it failed."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class ProbeOptions:
    model: str
    step: str  # "train" or "evaluate": the job shape measured
    out: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    amp: str = "auto"
    workers: int | str = "auto"
    steps: int = 3  # optimizer steps measured after one warm-up step
    shards: list[str] = field(default_factory=list)  # the job's packed shards, read when they exist
    stage_to: str | None = None
    read_clips: int = 8  # clips decoded to time the loader


def _config(opts: ProbeOptions) -> Any:
    """The zoo entry the probed job trains or evaluates, with its overrides (as `tokshift train` applies them)."""
    from tokshift.zoo import get_config

    cfg = get_config(opts.model)
    return cfg.replace(**opts.overrides) if opts.overrides else cfg


def _write(path: Path, report: dict[str, Any]) -> None:
    from tokshift.fileio import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=True) + "\n")


def run_probe(opts: ProbeOptions) -> int:
    """Measure one job shape; rank 0 writes `opts.out` (JSON). Returns 0 unless the probe itself is broken."""
    from tokshift import provenance
    from tokshift.attempts import is_rank_zero
    from tokshift.engine import distributed as D
    from tokshift.engine.gpu_env import GpuUnusable
    from tokshift.engine.startup import start_process

    report: dict[str, Any] = {"model": opts.model, "step": opts.step, "checks": [], "measured": {}}
    checks: list[Check] = []
    try:
        started = start_process(opts.device, opts.amp, opts.workers)
    except GpuUnusable as exc:
        checks.append(Check("cuda", False, str(exc), "fix the job's GPU request or the node's driver (docs/gpu.md)"))
        report["checks"] = [asdict(c) for c in checks]
        report["provenance"] = provenance.collect("preflight-probe")
        if is_rank_zero():
            _write(opts.out, report)
        return 0
    ctx = D.init_distributed(started.device, reason=started.reason)
    try:
        checks.append(_device_check(started.device))
        checks.append(_all_reduce(ctx, report["measured"]))
        if opts.step == "train":
            checks.append(_train_steps(opts, ctx, started, report["measured"]))
        else:
            checks.append(_evaluate_batch(opts, ctx, started, report["measured"]))
        checks.extend(_shards(opts, started.workers, report["measured"]))
        report["measured"]["world_size"] = ctx.world_size
        report["measured"]["devices"] = list(ctx.devices)
        report["measured"]["nodes"] = sorted(set(ctx.nodes))
        report["measured"]["workers"] = started.workers
        report["checks"] = [asdict(c) for c in checks]
        report["provenance"] = provenance.finish(
            provenance.collect("preflight-probe", devices=ctx.devices, nodes=ctx.nodes)
        )
        if ctx.is_main:
            _write(opts.out, report)
    finally:
        D.shutdown(ctx, False)
    return 0


def _device_check(device: Any) -> Check:
    import torch

    if device.type != "cuda":
        return Check("device", True, f"{device} (no GPU asked for)")
    name = torch.cuda.get_device_name(device)
    bf16 = torch.cuda.is_bf16_supported()
    return Check("device", True, f"{name}, CUDA build {torch.version.cuda}, bf16 {'yes' if bf16 else 'no'}")


def _all_reduce(ctx: Any, measured: dict[str, Any]) -> Check:
    """Sum a 64 MB tensor over every rank: the right answer, and how fast (bus bandwidth)."""
    import torch

    from tokshift.engine import distributed as D

    n = 16 * 1024 * 1024
    t = torch.ones(n, dtype=torch.float32, device=ctx.device)
    D.all_reduce(ctx, t)  # warm-up: the communicator forms here
    t.fill_(1.0)
    _sync(ctx.device)
    t0 = time.perf_counter()
    D.all_reduce(ctx, t)
    _sync(ctx.device)
    seconds = time.perf_counter() - t0
    ok = bool(torch.all(t == ctx.world_size).item())
    busbw = 2 * (ctx.world_size - 1) / max(ctx.world_size, 1) * n * 4 / max(seconds, 1e-9) / 1e9
    measured["all_reduce_seconds_64mb"] = seconds
    measured["all_reduce_bus_gbps"] = busbw if ctx.world_size > 1 else None
    backend = "none (one process)" if ctx.world_size == 1 else ("nccl" if ctx.device.type == "cuda" else "gloo")
    detail = f"{ctx.world_size} rank(s) on {len(set(ctx.nodes))} node(s), {backend}, {seconds * 1e3:.1f} ms for 64 MB"
    return Check("all_reduce", ok, detail, "" if ok else "ranks disagree: check the network between the nodes")


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device: Any) -> tuple[int | None, int | None]:
    """(peak bytes this process used, bytes the device has); CPU: the process's peak RSS, no total."""
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), torch.cuda.get_device_properties(device).total_memory
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, None


def _train_steps(opts: ProbeOptions, ctx: Any, started: Any, measured: dict[str, Any]) -> Check:
    """Optimizer steps of the real model on synthetic clips at the configured batch and accumulation."""
    import torch
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    from tokshift.data.transforms import normalize
    from tokshift.engine.loading import build_model
    from tokshift.engine.runtime import amp_choice, autocast
    from tokshift.engine.train import make_optimizer

    cfg = _config(opts).replace(imagenet_weights=None)  # random weights time the same as pretrained ones
    amp_dtype, _ = amp_choice(opts.amp, started.device)
    model = build_model(cfg.model_dict()).to(started.device)
    model.train()
    ddp = DDP(model) if ctx.world_size > 1 else model
    optimizer = make_optimizer(model, cfg, cfg.lr)
    g = torch.Generator().manual_seed(ctx.rank)
    shape = (cfg.batch_size, cfg.num_frames, 3, cfg.img_size, cfg.img_size)
    clips = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g).to(started.device)
    labels = torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=g).to(started.device)
    if started.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(started.device)

    def step() -> None:
        for _ in range(cfg.accum_steps):
            with autocast(started.device, amp_dtype):
                logits = ddp(normalize(clips))
            F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    try:
        step()  # warm-up: allocator, kernels, DDP buckets
        _sync(started.device)
        t0 = time.perf_counter()
        for _ in range(opts.steps):
            step()
        _sync(started.device)
    except torch.OutOfMemoryError:
        peak, total = _peak_memory(started.device)
        return Check(
            "train_step",
            False,
            f"out of memory at batch {cfg.batch_size} per process ({_gib(total)} on the device)",
            "lower train.per_model.<model>.batch_size and raise accum_steps (same global batch), "
            "or set train.grad_checkpointing / train.oom_fallback",
        )
    seconds = (time.perf_counter() - t0) / opts.steps
    peak, total = _peak_memory(started.device)
    measured.update(
        step_seconds=seconds,
        batch_size=cfg.batch_size,
        accum_steps=cfg.accum_steps,
        peak_memory_bytes=peak,
        device_memory_bytes=total,
        amp=str(amp_dtype or "off").replace("torch.", ""),
    )
    detail = (
        f"{seconds:.3f} s per optimizer step (batch {cfg.batch_size} x {cfg.accum_steps} accumulation x "
        f"{ctx.world_size} process(es)), peak memory {_gib(peak)}" + (f" of {_gib(total)}" if total else "")
    )
    return Check("train_step", True, detail)


def _evaluate_batch(opts: ProbeOptions, ctx: Any, started: Any, measured: dict[str, Any]) -> Check:
    """One video's 30 views (10 clips x 3 crops) through the model, as the evaluation batches them."""
    import torch

    from tokshift.data.transforms import normalize
    from tokshift.engine.loading import build_model
    from tokshift.engine.runtime import amp_choice, autocast

    cfg = _config(opts)
    amp_dtype, _ = amp_choice(opts.amp, started.device)
    model = build_model(cfg.model_dict()).to(started.device).eval()
    views = torch.randint(0, 256, (30, cfg.num_frames, 3, cfg.img_size, cfg.img_size), dtype=torch.uint8)
    views = views.to(started.device)
    if started.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(started.device)
    with torch.no_grad(), autocast(started.device, amp_dtype):
        model(normalize(views[:2]))  # warm-up
        _sync(started.device)
        t0 = time.perf_counter()
        for _ in range(max(1, opts.steps)):
            model(normalize(views))
        _sync(started.device)
    seconds = (time.perf_counter() - t0) / max(1, opts.steps)
    peak, total = _peak_memory(started.device)
    measured.update(video_seconds=seconds, views=30, peak_memory_bytes=peak, device_memory_bytes=total)
    return Check("evaluate_batch", True, f"{seconds:.3f} s per video (30 views), peak memory {_gib(peak)}")


def _shards(opts: ProbeOptions, workers: int, measured: dict[str, Any]) -> list[Check]:
    """Read throughput of the packed shards (one process) and the room at frames.stage_to."""
    present = [s for s in opts.shards if Path(s).exists()]
    if not opts.shards:
        return []
    if not present:
        return [Check("shards", True, "not packed yet: read throughput is measured once they exist")]
    cfg = _config(opts)
    if opts.step == "train":
        from tokshift.data.datasets import TrainClipDataset

        ds: Any = TrainClipDataset(present, cfg.num_frames, cfg.frame_stride, cfg.img_size, tuple(cfg.train_short_side))
    else:
        from tokshift.data.datasets import EvalViewDataset

        ds = EvalViewDataset(present, cfg.num_frames, cfg.frame_stride, cfg.img_size)
    count = min(len(ds), opts.read_clips)
    t0 = time.perf_counter()
    for i in range(count):
        ds[i]
    seconds = time.perf_counter() - t0
    rate = count / max(seconds, 1e-9)
    measured.update(loader_items_per_second=rate, loader_workers=workers)
    checks = [
        Check("shard_read", True, f"{rate:.1f} {'clips' if opts.step == 'train' else 'videos'}/s per loader process")
    ]
    size = sum(_size(Path(s)) for s in present)
    measured["shard_bytes"] = size
    if opts.stage_to:
        where = Path(os.path.expandvars(opts.stage_to))
        probe = where if where.exists() else where.parent
        free = shutil.disk_usage(probe).free if probe.exists() else 0
        ok = free >= size
        measured["stage_to_free_bytes"] = free
        checks.append(
            Check(
                "stage_to",
                ok,
                f"{where}: {_gib(free)} free for {_gib(size)} of shards",
                "" if ok else "point frames.stage_to at a larger node-local disk, or leave it null to read in place",
            )
        )
    return checks


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.2f} GiB"
