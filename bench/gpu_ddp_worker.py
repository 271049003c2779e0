"""One rank of the DDP training check in bench_gpu.py; launched by torchrun, prints JSON lines.

Joins the process group the way `tokshift train` does (`init_distributed`: NCCL on GPUs, gloo on
CPUs), wraps the zoo model in DDP and runs optimizer steps on synthetic uint8 clips at the zoo's
per-GPU batch, bf16 autocast + fused attention on a GPU. Each rank prints one line per step:
step time and `torch.cuda.max_memory_allocated()` so far, so a growing peak shows.

    torchrun --standalone --nproc-per-node=2 bench/gpu_ddp_worker.py --model NAME --steps 50
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokshift.data.transforms import normalize  # noqa: E402
from tokshift.engine.distributed import init_distributed, shutdown  # noqa: E402
from tokshift.engine.loading import build_model  # noqa: E402
from tokshift.engine.runtime import set_fused_attention  # noqa: E402
from tokshift.engine.train import make_optimizer  # noqa: E402
from tokshift.zoo import get_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="k400_tokshift_div4_8x32_base_224")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=0, help="per-process batch; 0: the zoo's per-GPU batch")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args()

    ctx = init_distributed(args.device)
    dev = ctx.device
    if not dist.is_initialized():  # one process: still a (single-rank) group, so DDP and NCCL are exercised
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    backend = dist.get_backend()
    cfg = get_config(args.model)
    batch = args.batch or cfg.batch_size
    amp = torch.bfloat16 if dev.type == "cuda" else None
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(dist.get_rank())
    with dev:
        model = build_model(cfg.model_dict()).train()
    set_fused_attention(model, True)
    # As `tokshift train` wraps it: gradients are views into the all-reduce buckets (no second copy).
    ddp = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None, gradient_as_bucket_view=True)
    opt = make_optimizer(model, cfg, 1e-4)
    x = torch.randint(0, 256, (batch, cfg.num_frames, 3, cfg.img_size, cfg.img_size), dtype=torch.uint8, device=dev)
    y = torch.randint(0, cfg.num_classes, (batch,), device=dev)
    rank, world = dist.get_rank(), dist.get_world_size()
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            logits = ddp(normalize(x))
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        record = {
            "rank": rank,
            "world": world,
            "backend": backend,
            "step": step,
            "batch": batch,
            "ms": 1000 * (time.perf_counter() - t0),
            "loss": float(loss),
            "max_allocated": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0,
            "reserved": torch.cuda.memory_reserved(dev) if dev.type == "cuda" else 0,
        }
        print(json.dumps(record), flush=True)
    dist.barrier()
    if ctx.distributed:
        shutdown(ctx)
    else:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
