"""Out of GPU memory: a message that says what to change, and an opt-in fallback that changes it.

A CUDA out-of-memory at the configured per-GPU batch happens at the first optimizer step, and
a rerun with the same batch repeats it, so it must not be retried as it is. Training therefore
runs one probe step (forward and backward of a synthetic batch, then the gradients dropped) on
every rank before the first real one. When a rank runs out of memory there, every rank learns
it (one all-reduce), and

- with `train.oom_fallback` (`--oom-fallback`) the per-GPU batch is halved and the gradient
  accumulation doubled, which keeps the global batch and so the recipe, until it fits;
- without it the run stops with `OutOfMemory` (exit NOT_RETRYABLE) naming the model, the
  per-GPU batch, the card's memory and the override that keeps the global batch.

An out-of-memory later in training (fragmentation, a longer validation batch) ends the run with
the same message; one in `tokshift evaluate` names the `--view-batch` to lower instead.
`TOKSHIFT_OOM_ABOVE_BATCH=N` makes forward passes of more than N clips (or views) raise
`torch.OutOfMemoryError`, so the behaviour can be tested on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tokshift.engine import distributed as D
from tokshift.errors import BadInput, NotRetryable
from tokshift.zoo import ZooConfig

log = logging.getLogger("tokshift.engine")

#: Test hook: training forward passes of more than this many clips raise torch.OutOfMemoryError.
INJECT_VAR = "TOKSHIFT_OOM_ABOVE_BATCH"


class OutOfMemory(NotRetryable):
    """The model does not fit the GPU at this per-GPU batch; the message says what fits instead."""


def smaller_layout(batch_size: int, accum_steps: int) -> tuple[int, int] | None:
    """(batch, accumulation) with at most half the per-GPU batch and the same clips per optimizer step.

    The largest batch <= batch_size // 2 that divides batch_size * accum_steps, so that the global
    batch (and with it the learning rate and the schedule) stays; None when the batch is already 1.
    """
    per_step = batch_size * accum_steps
    for b in range(batch_size // 2, 0, -1):
        if per_step % b == 0:
            return b, per_step // b
    return None


def card_description(device: torch.device) -> str:
    """`NVIDIA H100 80GB HBM3 (79.1 GiB)`, or the device type when it is no GPU."""
    if device.type != "cuda":
        return device.type
    props = torch.cuda.get_device_properties(device)
    return f"{props.name} ({props.total_memory / 2**30:.1f} GiB)"


def training_oom_message(cfg: ZooConfig, world_size: int, device: torch.device, *, fallback: bool) -> str:
    """What ran out of memory and the settings that keep the global batch with less memory per GPU."""
    global_batch = cfg.batch_size * world_size * cfg.accum_steps
    head = (
        f"out of GPU memory on {card_description(device)} training {cfg.name} at {cfg.batch_size} clip(s) per GPU "
        f"({cfg.batch_size} x {world_size} process(es) x {cfg.accum_steps} accumulation = global batch {global_batch})"
    )
    smaller = smaller_layout(cfg.batch_size, cfg.accum_steps)
    if smaller is None:
        return (
            f"{head}; one clip per GPU does not fit: set train.grad_checkpointing: true (--grad-checkpointing), "
            "use a card with more memory, or a smaller model"
        )
    b, a = smaller
    keep = (
        f"--override batch_size={b} accum_steps={a} keeps the global batch "
        f"(config.yaml: train.per_model: {{{cfg.name}: {{batch_size: {b}, accum_steps: {a}}}}})"
    )
    if fallback:
        return f"{head}, even after halving the per-GPU batch in-process; {keep}, or set train.grad_checkpointing: true"
    return (
        f"{head}; {keep}; train.oom_fallback: true (--oom-fallback) does this by itself, and "
        "train.grad_checkpointing: true (--grad-checkpointing) saves activation memory instead"
    )


def evaluation_oom_message(model: str, view_batch: int, device: torch.device) -> str:
    return (
        f"out of GPU memory on {card_description(device)} evaluating {model} at {view_batch} views per forward pass; "
        f"lower --view-batch (config: evaluate.view_batch), e.g. to {max(1, view_batch // 2)}: "
        "the metrics do not change"
    )


def injected_oom_limit(env: Mapping[str, str] = os.environ) -> int | None:
    value = env.get(INJECT_VAR, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise BadInput(f"{INJECT_VAR}={value!r}: expected a number of clips; unset it for a normal run")
    return int(value)


def inject_oom(model: nn.Module, env: Mapping[str, str] = os.environ, *, inference: bool = False) -> Any:
    """With TOKSHIFT_OOM_ABOVE_BATCH=N, forward passes of more than N clips raise an OOM: training
    passes, or with `inference` every pass (the evaluate command's views).

    Returns the hook's handle (None when the variable is unset)."""
    limit = injected_oom_limit(env)
    if limit is None:
        return None

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        if (inference or module.training) and args and args[0].shape[0] > limit:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (injected: {INJECT_VAR}={limit}, batch {args[0].shape[0]})"
            )

    log.warning("%s=%d: forward passes of more than %d clips raise out-of-memory", INJECT_VAR, limit, limit)
    return model.register_forward_pre_hook(hook)


def _free(model: nn.Module, device: torch.device) -> None:
    model.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def probe_step(
    model: nn.Module, cfg: ZooConfig, device: torch.device, autocast: Callable[[], Any], batch_size: int
) -> bool:
    """Forward and backward of one synthetic batch of `batch_size` clips; False when it ran out of memory.

    The RNG state is restored afterwards and the gradients dropped, so training starts exactly as
    without the probe; the weights are not changed (no optimizer step).
    """
    from tokshift.data.transforms import normalize

    devices = [device] if device.type == "cuda" else []
    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng(devices=devices):
            g = torch.Generator().manual_seed(0)
            clips = torch.randint(
                0, 256, (batch_size, cfg.num_frames, 3, cfg.img_size, cfg.img_size), dtype=torch.uint8, generator=g
            )
            labels = torch.zeros(batch_size, dtype=torch.long, device=device)
            with autocast():
                logits = model(normalize(clips.to(device)))
            F.cross_entropy(logits.float(), labels).backward()
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        _free(model, device)
        model.train(was_training)


def fit_batch(
    model: nn.Module,
    cfg: ZooConfig,
    ctx: D.DistContext,
    autocast: Callable[[], Any],
    *,
    fallback: bool,
    probe: Callable[..., bool] = probe_step,
) -> ZooConfig:
    """`cfg` with a per-GPU batch every rank can train, found by probe steps before training starts.

    Collective (one all-reduce per probe). Probes only on a GPU, or where an out-of-memory is
    injected: on a CPU there is no card to fill and the probe would only cost a step.
    """
    if ctx.device.type != "cuda" and injected_oom_limit() is None:
        return cfg
    while True:
        ok = probe(model, cfg, ctx.device, autocast, cfg.batch_size)
        failed = torch.tensor([0.0 if ok else 1.0], device=ctx.device)
        if not D.all_reduce(ctx, failed, "max").item():
            return cfg
        smaller = smaller_layout(cfg.batch_size, cfg.accum_steps) if fallback else None
        if smaller is None:
            raise OutOfMemory(training_oom_message(cfg, ctx.world_size, ctx.device, fallback=fallback))
        b, a = smaller
        log.warning(
            "out of GPU memory at %d clip(s) per GPU on %s; --oom-fallback: continuing with batch_size=%d "
            "accum_steps=%d (the global batch %d stays)",
            cfg.batch_size,
            card_description(ctx.device),
            b,
            a,
            cfg.batch_size * cfg.accum_steps * ctx.world_size,
        )
        cfg = cfg.replace(batch_size=b, accum_steps=a)


@contextlib.contextmanager
def reported(message: Callable[[], str]) -> Any:
    """Turn a torch.OutOfMemoryError raised inside into OutOfMemory(message())."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise OutOfMemory(message()) from exc
