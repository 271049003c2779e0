"""Everything a short GPU session must record, in one run of about 6 minutes on an H100/H200.

Writes a Markdown report (card, memory, driver, CUDA build, torch, NCCL, then one table per
section) and rewrites it as each section ends, so a run cut short still leaves its numbers.
Each section runs on its own; one that fails records its error and the next one starts.

  a. training step of the main model at the zoo's per-GPU batch: fp32 (TF32 on, the fair
     baseline) with eager and with fused attention vs bf16 autocast + fused attention; step
     time, clips/s, MFU (3 x forward FLOPs = 6 x MACs per clip, against the card's dense bf16
     peak); TokShift vs the plain per-frame ViT at the same batch (goal: TokShift <= 3 % slower);
  b. DDP training over NCCL with torchrun (2 processes when 2 GPUs are visible, else 1), ~50
     optimizer steps, `torch.cuda.max_memory_allocated()` per step (bench/gpu_ddp_worker.py);
  c. torch.compile: the first step (compilation) and the steady step time against eager;
  d. 30-view evaluation (`tokshift.engine.evaluate.view_logits`, view batch 30, bf16): videos/s;
  e. peak memory of a training step (bf16, SGD) for every K400 zoo entry at its per-GPU batch
     against `estimate_peak_bytes`, a CPU-side estimate (goal: within 20 %).

No downloads: random weights, synthetic uint8 clips, FLOPs from `tokshift.flops`.

    python bench/bench_gpu.py --out bench/RESULTS_gpu.md            # on a GPU machine
    python bench/bench_gpu.py --estimate-only                       # CPU: the memory estimate table
    python bench/bench_gpu.py --quick --device cpu --model demo_tokshift --compare demo_vit \\
        --out /tmp/smoke.md                                         # every code path, tiny, on CPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))

from bench_pack import machine  # noqa: E402
from bench_train import PEAK_BF16, compute_only, enable_tf32, make_train_step, time_steps  # noqa: E402

from tokshift.data.transforms import normalize  # noqa: E402
from tokshift.engine.evaluate import view_logits  # noqa: E402
from tokshift.engine.loading import build_model  # noqa: E402
from tokshift.engine.runtime import set_fused_attention  # noqa: E402
from tokshift.engine.train import make_optimizer  # noqa: E402
from tokshift.flops import model_cost  # noqa: E402
from tokshift.zoo import ZooConfig, get_config, zoo_names  # noqa: E402

GIB = 2**30
ESTIMATE_HEADING = "CPU-side memory estimate"
#: A machine-readable line with the measured GPU rates; bench_decoders.py reads it.
RATES_RE = re.compile(r"<!-- rates: (\{.*\}) -->")


# --------------------------------------------------------------------------- report


class Report:
    """The Markdown report, rewritten whole (atomically) after every section."""

    def __init__(self, path: Path, title: str, header: list[str]) -> None:
        self.path, self.title, self.header = path, title, header
        self.sections: list[tuple[str, list[str]]] = []
        self.rates: dict[str, Any] = {}

    def add(self, heading: str, lines: list[str]) -> None:
        self.sections.append((heading, lines))
        self.write()

    def text(self) -> str:
        out = [f"# {self.title}", "", *self.header, ""]
        for heading, lines in self.sections:
            out += [f"## {heading}", "", *lines, ""]
        if self.rates:
            out.append(f"<!-- rates: {json.dumps(self.rates, sort_keys=True)} -->")
        return "\n".join(out).rstrip() + "\n"

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(self.text())
        os.replace(tmp, self.path)


def replace_section(path: Path, heading: str, lines: list[str], title: str) -> None:
    """Put `## heading` with `lines` into the Markdown file at `path`, keeping its other sections."""
    text = path.read_text() if path.exists() else f"# {title}\n"
    block = "\n".join([f"## {heading}", "", *lines]).rstrip() + "\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |^<!-- rates|\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: block + "\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + block
    path.write_text(text.rstrip() + "\n")


def read_rates(path: Path) -> dict[str, Any]:
    """The measured GPU rates a previous run left in `path` ({} when none)."""
    if not path.exists():
        return {}
    m = RATES_RE.search(path.read_text())
    return json.loads(m.group(1)) if m else {}


def gpu_description(dev: torch.device) -> list[str]:
    """Card, memory, driver, CUDA build, torch, NCCL: what the numbers below depend on."""
    import timm

    lines = [f"- host: {machine()}, {platform.platform()}"]
    lines.append(f"- torch {torch.__version__}, timm {timm.__version__}, CUDA build {torch.version.cuda}")
    if dev.type != "cuda":
        lines.append(f"- device: CPU ({torch.get_num_threads()} intra-op threads); no GPU: a smoke run, not a result")
        return lines
    props = torch.cuda.get_device_properties(dev)
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,power.limit,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError) as e:
        smi = f"nvidia-smi failed: {e}"
    try:
        nccl = ".".join(str(v) for v in torch.cuda.nccl.version())
    except Exception as e:  # noqa: BLE001 - a build without NCCL is itself the finding
        nccl = f"unavailable ({e})"
    lines += [
        f"- GPU: {props.name} x {torch.cuda.device_count()}, {props.total_memory / GIB:.1f} GiB, "
        f"compute capability {props.major}.{props.minor}, {props.multi_processor_count} SMs",
        f"- driver, power limit, max SM clock: {smi}",
        f"- NCCL {nccl}, cuDNN {torch.backends.cudnn.version()}",
        f"- dense bf16 peak used for MFU: {peak_flops(dev) / 1e12:.0f} TFLOP/s"
        if peak_flops(dev)
        else "- MFU: card not in PEAK_BF16",
    ]
    return lines


def peak_flops(dev: torch.device) -> float | None:
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def failure(e: BaseException) -> list[str]:
    """What a failed section leaves in the report: the error and the last lines of its traceback."""
    tb = traceback.format_exception(e)
    return [
        "**failed**: `" + f"{type(e).__name__}: {e}".replace("`", "'")[:500] + "`",
        "",
        "```",
        *"".join(tb[-3:]).splitlines()[-12:],
        "```",
    ]


@contextlib.contextmanager
def released(dev: torch.device) -> Iterator[None]:
    """Free what a section left on the GPU, whatever happens in it."""
    try:
        yield
    finally:
        import gc

        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# --------------------------------------------------------------------------- a: step, MFU, TokShift vs ViT


def clip_macs(cfg: ZooConfig) -> tuple[float | None, str]:
    """MACs per clip from `tokshift.flops` (else the zoo's paper figure), and a note when it had to fall back.

    The MFU column must not take the timings down with it.
    """
    try:
        return float(model_cost(cfg).macs), ""
    except Exception as e:  # noqa: BLE001
        why = f"`tokshift.flops.model_cost` failed ({type(e).__name__}: {e})"
        if cfg.paper_gflops:
            return cfg.paper_gflops * 1e9, f" MACs from the paper's GFLOPs per view: {why}."
        return None, f" No MFU: {why}."


def section_step(args: argparse.Namespace, dev: torch.device, rep: Report) -> list[str]:
    cfg = get_config(args.model)
    batch = args.batch or cfg.batch_size
    macs, macs_note = clip_macs(cfg)
    peak = peak_flops(dev) if macs else None
    macs_text = f"{macs / 1e9:.1f} GMACs" if macs else "unknown MACs"
    whose = "" if args.batch else " (the zoo's)"
    lines = [
        f"{args.model}, batch {batch} per GPU{whose}, {macs_text} per clip, synthetic uint8 "
        f"clips on the device, SGD + grad-norm clip; {args.steps} timed steps after 3 warm-up steps. MFU = 3 x forward "
        "FLOPs (6 x MACs) per clip x clips/s / dense bf16 peak. fp32 runs with TF32 matmuls/convolutions on."
        + macs_note,
        "",
        "| mode | step ms | clips/s | MFU | vs fp32 (TF32) eager |",
        "|---|---|---|---|---|",
    ]
    base = None
    modes = [
        ("fp32 (TF32), eager attention [baseline]", None, False),
        ("fp32 (TF32), fused attention", None, True),
        ("bf16 autocast, fused attention", torch.bfloat16, True),
    ]
    for label, amp, fused in modes:
        try:
            with released(dev):
                r = compute_only(args.model, batch, args.steps, dev, amp, fused)
        except Exception as e:  # noqa: BLE001 - one mode failing must not hide the others
            lines.append(f"| {label} | failed: {type(e).__name__}: {str(e)[:200]} | | | |")
            continue
        base = base or r["clips_per_s"]
        mfu = f"{100 * 6 * macs * r['clips_per_s'] / peak:.1f}%" if peak else "-"
        lines.append(
            f"| {label} | {1000 * batch / r['clips_per_s']:.1f} | {r['clips_per_s']:.1f} | {mfu} "
            f"| {r['clips_per_s'] / base:.2f}x |"
        )
        if amp is torch.bfloat16:
            rep.rates.update(
                {"model": args.model, "train_clips_per_s": round(r["clips_per_s"], 2), "train_batch": batch}
            )
        print(lines[-1], flush=True)

    # TokShift vs ViT: same batch, bf16 + fused, interleaved rounds (order alternating), median.
    amp = torch.bfloat16 if dev.type == "cuda" or args.quick else None
    times: dict[str, list[float]] = {args.model: [], args.compare: []}
    for r in range(args.rounds):
        for name in list(times) if r % 2 == 0 else list(times)[::-1]:
            with released(dev):
                step = make_train_step(name, batch, dev, amp, True)
                time_steps(step, 3, dev)
                wall, _ = time_steps(step, args.steps, dev)
                del step
            times[name].append(1000 * wall / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    over = med[args.model] / med[args.compare] - 1
    lines += [
        "",
        f"TokShift vs plain ViT, batch {batch}, {'bf16' if amp else 'fp32'} + fused attention, "
        f"median of {args.rounds} interleaved rounds of {args.steps} steps:",
        "",
        "| model | step ms (median) | all rounds |",
        "|---|---|---|",
        *(f"| {k} | {med[k]:.1f} | {', '.join(f'{t:.1f}' for t in v)} |" for k, v in times.items()),
        "",
        f"TokShift costs **{100 * over:+.1f} %** per step over the ViT (goal: <= +3 %): "
        f"{'met' if over <= 0.03 else 'NOT met'}.",
    ]
    return lines


# --------------------------------------------------------------------------- b: DDP over NCCL with torchrun


def section_ddp(args: argparse.Namespace, dev: torch.device, rep: Report) -> list[str]:
    gpus = torch.cuda.device_count() if dev.type == "cuda" else 0
    nproc = 2 if gpus >= 2 or dev.type == "cpu" else 1
    steps = args.ddp_steps
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        str(BENCH / "gpu_ddp_worker.py"),
        "--model",
        args.model,
        "--steps",
        str(steps),
        "--device",
        dev.type,
    ]
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.ddp_timeout, cwd=REPO)
    wall = time.perf_counter() - t0
    recs = []
    for line in proc.stdout.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            if line.startswith("{"):
                recs.append(json.loads(line))
    note = (
        f"{nproc} processes"
        if nproc == 2
        else "1 process (only one GPU visible: a single-rank NCCL group, so DDP and NCCL start but move no data)"
    )
    lines = [
        f"`torchrun --standalone --nproc-per-node={nproc} bench/gpu_ddp_worker.py --model {args.model} "
        f"--steps {steps}`: {note}; exit code {proc.returncode}, {wall:.0f} s including start-up.",
        "",
    ]
    if proc.returncode != 0 or not recs:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        return lines + ["**failed**; last lines:", "", "```", *tail, "```"]
    r0 = [r for r in recs if r["rank"] == 0]
    batch, world = r0[0]["batch"], r0[0]["world"]
    steady = [r["ms"] for r in r0[min(5, len(r0) - 1) :]]
    ms = statistics.median(steady)
    lines += [
        f"backend {r0[0]['backend']}, world size {world}, per-process batch {batch}, "
        f"{'bf16' if dev.type == 'cuda' else 'fp32'} + fused attention: median step {ms:.1f} ms after 5 warm-up "
        f"steps (first step {r0[0]['ms']:.0f} ms), {world * batch * 1000 / ms:.1f} clips/s "
        f"for the group; loss {r0[0]['loss']:.3f} -> {r0[-1]['loss']:.3f}.",
        "",
        "`torch.cuda.max_memory_allocated()` (GiB) after each step, rank by rank (a value that keeps rising "
        "after the first steps would be a leak):",
        "",
    ]
    shown = sorted({1, 2, 3, 5, 10, 20, 30, 40, steps} & set(range(1, steps + 1)))
    lines += ["| rank | " + " | ".join(f"step {s}" for s in shown) + " | reserved at end |"]
    lines += ["|---" * (len(shown) + 2) + "|"]
    for rank in sorted({r["rank"] for r in recs}):
        by_step = {r["step"]: r for r in recs if r["rank"] == rank}
        cells = [f"{by_step[s]['max_allocated'] / GIB:.2f}" if s in by_step else "-" for s in shown]
        last = by_step[max(by_step)]
        lines.append(f"| {rank} | " + " | ".join(cells) + f" | {last['reserved'] / GIB:.2f} |")
    rep.rates["ddp_step_ms"] = round(ms, 2)
    return lines


# --------------------------------------------------------------------------- c: torch.compile


def section_compile(args: argparse.Namespace, dev: torch.device, rep: Report) -> list[str]:
    cfg = get_config(args.model)
    batch = args.batch or cfg.batch_size
    amp = torch.bfloat16 if dev.type == "cuda" or args.quick else None
    lines = [
        f"{args.model}, batch {batch}, {'bf16' if amp else 'fp32'} + fused attention, `torch.compile(model)` (default "
        "mode), the way `tokshift train --compile` wraps it; the first step includes compiling forward and backward.",
        "",
        "| run | first step s | steady step ms | vs eager |",
        "|---|---|---|---|",
    ]
    res = {}
    for label, comp in (("eager", False), ("torch.compile", True)):
        with released(dev):
            step = make_train_step(args.model, batch, dev, amp, True, compile=comp)
            first, _ = time_steps(step, 1, dev)
            time_steps(step, 2, dev)
            wall, _ = time_steps(step, args.steps, dev)
            del step
        res[label] = 1000 * wall / args.steps
        lines.append(f"| {label} | {first:.1f} | {res[label]:.1f} | {res['eager'] / res[label]:.2f}x |")
        print(lines[-1], flush=True)
    return lines


# --------------------------------------------------------------------------- d: 30-view evaluation


def section_eval(args: argparse.Namespace, dev: torch.device, rep: Report) -> list[str]:
    cfg = get_config(args.model)
    amp = torch.bfloat16 if dev.type == "cuda" or args.quick else None
    views, view_batch = 30, 30
    with dev:
        model = build_model(cfg.model_dict()).eval()
    set_fused_attention(model, True)
    x = torch.randint(0, 256, (views, cfg.num_frames, 3, cfg.img_size, cfg.img_size), dtype=torch.uint8)
    if dev.type == "cuda":
        x = x.pin_memory()  # as the evaluation DataLoader hands it over (pin_memory on a GPU)
    for _ in range(2):
        view_logits(model, x, dev, view_batch, amp)
    n = args.eval_videos
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(n):
        view_logits(model, x, dev, view_batch, amp)  # returns CPU logits: each call ends synchronised
    wall = time.perf_counter() - t0
    del model
    vps = n / wall
    rep.rates["eval_videos_per_s"] = round(vps, 2)
    macs, macs_note = clip_macs(cfg)
    peak = peak_flops(dev) if macs else None
    mfu = f"{100 * 2 * macs * views * vps / peak:.1f}%" if peak and macs else "-"
    source = "pinned host memory (the transfer is included)" if dev.type == "cuda" else "memory"
    return [
        f"{args.model}: `view_logits` on 30 synthetic uint8 views ({cfg.num_frames} x {cfg.img_size}) per video, "
        f"view batch {view_batch}, {'bf16' if amp else 'fp32'} + fused attention, uint8 views from "
        f"{source}, {n} videos after 2 warm-up videos.{macs_note}",
        "",
        "| videos/s | views/s | ms per video | MFU (2 x MACs per view) |",
        "|---|---|---|---|",
        f"| {vps:.2f} | {views * vps:.1f} | {1000 / vps:.1f} | {mfu} |",
    ]


# --------------------------------------------------------------------------- e: peak memory vs estimate


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of the parts that are alive together at a training step's peak."""

    name: str
    batch: int
    params: int
    weights_grads_state: int  # fp32 weights + fp32 grads + optimizer state (SGD momentum, or AdamW's two moments)
    weight_copies: int  # bf16 copies of the matmul weights that autocast keeps for backward (batch-independent)
    activations_per_clip: int  # bf16/fp32 tensors saved for backward, per clip
    seconds: float

    @property
    def total(self) -> int:
        return self.weights_grads_state + self.weight_copies + self.batch * self.activations_per_clip


_VIEW_GRADS = {
    "TBackward0",
    "ViewBackward0",
    "UnsafeViewBackward0",
    "PermuteBackward0",
    "TransposeBackward0",
    "ExpandBackward0",
    "AliasBackward0",
}


def saved_bytes(model: torch.nn.Module, x: torch.Tensor, amp: torch.dtype | None) -> tuple[int, int]:
    """(bytes of autocast weight copies, bytes of activations) that one forward saves for backward.

    Each storage counts once (views and tensors saved by several ops share one); parameters
    themselves are left out (they are counted as weights).
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    copies = acts = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal copies, acts
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in seen or key in params:
            return t
        seen.add(key)
        base = t
        while base._base is not None:
            base = base._base
        fn = base.grad_fn
        while fn is not None and type(fn).__name__ in _VIEW_GRADS:
            fn = fn.next_functions[0][0]
        is_copy = (
            fn is not None
            and type(fn).__name__ == "ToCopyBackward0"
            and type(fn.next_functions[0][0]).__name__ == "AccumulateGrad"
        )
        if is_copy:
            copies += storage.nbytes()
        else:
            acts += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            out = model(normalize(x))
    del out
    return copies, acts


def estimate_peak_bytes(
    cfg: ZooConfig | str, batch: int | None = None, amp: torch.dtype | None = torch.bfloat16
) -> MemoryEstimate:
    """A training step's peak GPU memory, estimated on the CPU without building the full model.

    Weights, grads and optimizer state come from the parameter count (fp32 each). What the
    forward saves for backward is measured on the CPU under bf16 autocast with one clip, on
    models of depth 1 and 2: every block of a ViT saves the same, so the full depth is
    depth-1 + (depth - 1) x (depth-2 minus depth-1), exact for this stack and many times
    cheaper than a ViT-L forward. Activations scale with the batch, weight copies do not.
    """
    cfg = get_config(cfg) if isinstance(cfg, str) else cfg
    batch = batch or cfg.batch_size
    t0 = time.perf_counter()
    with torch.device("meta"):  # the parameter count needs no memory and no forward
        params = sum(p.numel() for p in build_model(cfg.model_dict()).parameters())
    measured = []
    for depth in (1, 2):
        torch.manual_seed(0)
        model = build_model({**cfg.model_dict(), "depth": depth}).train()
        set_fused_attention(model, True)  # the training default: SDPA saves no attention matrix
        x = torch.randint(0, 256, (1, cfg.num_frames, 3, cfg.img_size, cfg.img_size), dtype=torch.uint8)
        measured.append(saved_bytes(model, x, amp))
        del model
    (c1, a1), (c2, a2) = measured
    copies = c1 + (cfg.depth - 1) * (c2 - c1)
    acts = a1 + (cfg.depth - 1) * (a2 - a1)
    state = {"sgd": 1, "adamw": 2}[cfg.optimizer]
    return MemoryEstimate(cfg.name, batch, params, params * 4 * (2 + state), copies, acts, time.perf_counter() - t0)


def measured_peak(name: str, batch: int, dev: torch.device) -> int:
    """Peak bytes allocated during one bf16 training step (after a warm-up step that creates the momentum)."""
    cfg = get_config(name)
    with dev:
        model = build_model(cfg.model_dict()).train()
    set_fused_attention(model, True)
    opt = make_optimizer(model, cfg, 1e-4)
    x = torch.randint(0, 256, (batch, cfg.num_frames, 3, cfg.img_size, cfg.img_size), dtype=torch.uint8, device=dev)
    y = torch.randint(0, cfg.num_classes, (batch,), device=dev)
    try:
        for i in range(2):
            if i == 1:
                sync(dev)
                torch.cuda.reset_peak_memory_stats(dev)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(normalize(x))
            F.cross_entropy(logits.float(), y).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            del logits
        sync(dev)
        return torch.cuda.max_memory_allocated(dev)
    finally:
        del model, opt, x, y


def memory_names(args: argparse.Namespace) -> list[str]:
    if args.quick:
        return [args.model, args.compare]
    return zoo_names("k400")


def estimate_table(names: list[str], rows_out: Callable[[list[str]], None] | None = None) -> list[str]:
    lines = [
        "| zoo entry | per-GPU batch | params (M) | weights + grads + momentum (GiB) | bf16 weight copies (GiB) "
        "| activations per clip (GiB) | estimate (GiB) | CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        try:
            e = estimate_peak_bytes(name)
            lines.append(
                f"| {name} | {e.batch} | {e.params / 1e6:.1f} | {e.weights_grads_state / GIB:.2f} | "
                f"{e.weight_copies / GIB:.2f} | {e.activations_per_clip / GIB:.3f} | **{e.total / GIB:.2f}** | "
                f"{e.seconds:.1f} |"
            )
        except Exception as ex:  # noqa: BLE001
            lines.append(f"| {name} | failed: {type(ex).__name__}: {str(ex)[:200]} | | | | | | |")
        print(lines[-1], flush=True)
        if rows_out:
            rows_out(lines)
    return lines


def depth_check(name: str) -> str:
    """The depth extrapolation against a full-depth measurement of one entry (they must agree)."""
    cfg = get_config(name)
    e = estimate_peak_bytes(cfg, batch=1)
    torch.manual_seed(0)
    model = build_model(cfg.model_dict()).train()
    set_fused_attention(model, True)
    x = torch.randint(0, 256, (1, cfg.num_frames, 3, cfg.img_size, cfg.img_size), dtype=torch.uint8)
    copies, acts = saved_bytes(model, x, torch.bfloat16)
    return (
        f"Check of the depth extrapolation on {name} (full depth {cfg.depth}, one clip): extrapolated "
        f"{e.activations_per_clip / 2**20:.1f} MiB activations + {e.weight_copies / 2**20:.1f} MiB weight copies, "
        f"measured {acts / 2**20:.1f} MiB + {copies / 2**20:.1f} MiB."
    )


ESTIMATE_NOTES = [
    "Estimate = fp32 weights + fp32 grads + SGD momentum (4 bytes each per parameter) + the bf16 copies of the "
    "matmul weights that autocast keeps for backward + per-clip saved activations x the per-GPU batch. The saved "
    "tensors are measured with `torch.autograd.graph.saved_tensors_hooks` during one bf16-autocast forward on the "
    "CPU (fused attention, as in training) of one clip, on models of depth 1 and 2, extrapolated to the full depth "
    "(every block saves the same). It counts grads as if all were alive with all activations; at the real peak "
    "(the start of backward) most grads do not exist yet, so it errs high by up to 4 bytes per parameter, and it "
    "leaves out the CUDA context, cuBLAS workspaces, kernel temporaries and allocator rounding.",
]


def section_memory(args: argparse.Namespace, dev: torch.device, rep: Report) -> list[str]:
    names = memory_names(args)
    head = [
        "Peak `torch.cuda.max_memory_allocated()` of one training step (bf16 autocast, fused attention, SGD "
        "momentum, grad-norm clip) at the zoo's per-GPU batch, after a warm-up step, against "
        "`estimate_peak_bytes` (computed on this machine's CPU). Goal: measured/estimated within 0.8-1.2.",
        "",
        "| zoo entry | per-GPU batch | measured (GiB) | estimate (GiB) | measured / estimate |",
        "|---|---|---|---|---|",
    ]
    lines = list(head)
    for name in names:
        batch = get_config(name).batch_size if not args.quick else min(get_config(name).batch_size, 2)
        try:
            est = estimate_peak_bytes(name, batch)
            if dev.type == "cuda":
                with released(dev):
                    peak = measured_peak(name, batch, dev)
                cells = f"{peak / GIB:.2f} | {est.total / GIB:.2f} | **{peak / est.total:.2f}**"
            else:
                cells = f"- (CPU run) | {est.total / GIB:.2f} | -"
        except torch.OutOfMemoryError:
            cells = f"OOM at batch {batch} | {est.total / GIB:.2f} | -"
        except Exception as e:  # noqa: BLE001
            cells = f"failed: {type(e).__name__}: {str(e)[:200]} | | "
        lines.append(f"| {name} | {batch} | {cells} |")
        print(lines[-1], flush=True)
        rep.sections[-1] = (SECTIONS["e"][0], [*lines, "", "(in progress)"])
        rep.write()
    return lines + ["", *ESTIMATE_NOTES]


# --------------------------------------------------------------------------- main

SECTIONS: dict[str, tuple[str, Callable[[argparse.Namespace, torch.device, Report], list[str]]]] = {
    "a": ("a. training step: fp32 (TF32) vs bf16, MFU, TokShift vs ViT", section_step),
    "b": ("b. DDP over NCCL with torchrun", section_ddp),
    "d": ("d. 30-view evaluation throughput", section_eval),
    "e": ("e. peak training memory vs CPU-side estimate", section_memory),
    "c": ("c. torch.compile: compilation and steady step", section_compile),  # last: the longest, may time out
}


def estimate_only(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    names = memory_names(args)
    intro = [
        f"Machine: {machine()}, torch {torch.__version__} (CPU, {torch.get_num_threads()} threads), no GPU; "
        f"load average {os.getloadavg()[0]:.1f} at the start. `python bench/bench_gpu.py --estimate-only`.",
        "",
    ]

    if not args.out.exists():
        args.out.write_text(
            "# GPU benchmarks\n\nThe GPU sections (a-e) are written by `python bench/bench_gpu.py --out "
            "bench/RESULTS_gpu.md` on a GPU machine (about 6 minutes on an H100/H200); none has run yet.\n"
        )

    def progress(rows: list[str]) -> None:
        replace_section(args.out, ESTIMATE_HEADING, [*intro, *rows, "", "(in progress)"], "GPU benchmarks")

    rows = estimate_table(names, progress)
    check = depth_check(names[0] if args.quick else "k400_tokshift_div4_8x32_base_224")
    print(check)
    replace_section(args.out, ESTIMATE_HEADING, [*intro, *rows, "", check, "", *ESTIMATE_NOTES], "GPU benchmarks")
    print(f"wrote {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=BENCH / "RESULTS_gpu.md")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="k400_tokshift_div4_8x32_base_224", help="the model of sections a-d")
    ap.add_argument("--compare", default="k400_vit_8x32_224", help="the plain ViT section a compares with")
    ap.add_argument("--batch", type=int, default=0, help="per-GPU batch; 0: the zoo's")
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the TokShift vs ViT comparison")
    ap.add_argument("--ddp-steps", type=int, default=50)
    ap.add_argument("--ddp-timeout", type=float, default=240.0, help="seconds before the torchrun check is stopped")
    ap.add_argument("--eval-videos", type=int, default=20)
    ap.add_argument("--sections", default="abdec", help="which sections to run, e.g. 'ae' (order: a b d e c)")
    ap.add_argument("--quick", action="store_true", help="shrink every section (a smoke test of the code paths)")
    ap.add_argument("--estimate-only", action="store_true", help="only the CPU-side memory estimate table")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads; 0: all usable cores")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.rounds, args.ddp_steps, args.eval_videos = 2, 2, 4, 2
        args.batch = args.batch or 2
    if args.estimate_only:
        estimate_only(args)
        return
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "bench_gpu.py: error: --device cuda but CUDA is not available; use --quick --device cpu or --estimate-only"
        )
    if dev.type == "cpu" and not args.quick:
        sys.exit("bench_gpu.py: error: no GPU; on a CPU run only --quick (a smoke test) or --estimate-only")
    if dev.type == "cpu":
        torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    else:
        enable_tf32()
    started = time.perf_counter()
    header = gpu_description(dev) + [
        f"- command: `python bench/bench_gpu.py {' '.join(sys.argv[1:])}`",
        f"- started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
    ]
    rep = Report(args.out, "GPU benchmarks" + (" (quick smoke run)" if args.quick else ""), header)
    rep.write()
    for key, (heading, fn) in SECTIONS.items():
        if key not in args.sections:
            continue
        t0 = time.perf_counter()
        rep.add(heading, ["(running)"])
        try:
            with released(dev):
                lines = fn(args, dev, rep)
        except Exception as e:  # noqa: BLE001 - record it and go on with the next section
            lines = failure(e)
        rep.sections[-1] = (heading, [*lines, "", f"_section time {time.perf_counter() - t0:.0f} s_"])
        rep.write()
        print(f"section {key} done in {time.perf_counter() - t0:.0f} s", flush=True)
    rep.header.append(f"- total {time.perf_counter() - started:.0f} s")
    rep.write()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
