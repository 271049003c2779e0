"""What a model will cost, projected from its preflight probes: hours, GPU-hours, memory, loader.

Plain arithmetic on the probes' measurements (tokshift.preflight.probe) and the recipe:

- training: optimizer steps (clips per epoch / global batch, times the recipe's epochs) times the
  measured step time, where the step time is the compute of the probe and, when the loader cannot
  keep up, the time the loader needs for a step's clips (added when there are no loader workers:
  the training process decodes them itself); plus the per-epoch 1-view validation pass;
- evaluation: videos times the measured seconds per 30-view video, shared by the job's processes;
- GPU-hours: wall hours times the job's GPUs (a CPU job counts none);
- memory: peak over the device's memory, and the largest per-GPU batch that would fit (memory
  grows about linearly with the batch), to keep the same global batch through accumulation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from tokshift.zoo import ZooConfig

__all__ = ["ModelPrice", "price_model"]

#: Share of a GPU's memory a batch may fill (the allocator and fragmentation want the rest).
USABLE_MEMORY = 0.9
#: A forward pass costs about a third of a training step (forward + backward).
FORWARD_SHARE = 1 / 3


@dataclass(frozen=True)
class ModelPrice:
    model: str
    gpus: int  # per job
    global_batch: int
    steps: int  # optimizer steps of the whole training
    step_seconds: float  # measured compute per optimizer step
    loader_seconds_per_step: float | None  # decoding a step's clips with the job's loader workers
    train_hours: float  # projected wall time of the training
    train_gpu_hours: float
    evaluate_hours: float | None
    evaluate_gpu_hours: float | None
    peak_memory_gib: float | None
    device_memory_gib: float | None
    largest_batch: int | None  # per GPU, at the same accumulation
    loader_keeps_up: bool | None
    clips_per_epoch: int
    val_videos: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _loader_seconds(clips: int, rate: float | None, workers: int) -> float | None:
    if not rate:
        return None
    return clips / (rate * max(workers, 1))


def price_model(
    cfg: ZooConfig,
    train_probe: dict[str, Any],
    evaluate_probe: dict[str, Any] | None,
    clips_per_epoch: int,
    val_videos: int,
    gpus: int,
) -> ModelPrice:
    """The projected cost of training and evaluating `cfg` from its probes' `measured` blocks."""
    m = train_probe["measured"]
    world = int(m.get("world_size") or 1)
    batch, accum = int(m["batch_size"]), int(m["accum_steps"])
    global_batch = batch * accum * world
    steps_per_epoch = max(1, math.ceil(clips_per_epoch / global_batch))
    steps = steps_per_epoch * cfg.epochs
    compute = float(m["step_seconds"])
    workers = int(m.get("loader_workers") or m.get("workers") or 0)
    loader = _loader_seconds(batch * accum, m.get("loader_items_per_second"), workers)
    if loader is None:
        step = compute
    elif workers == 0:
        step = compute + loader  # the training process decodes its own clips
    else:
        step = max(compute, loader)
    # The per-epoch check: one view of each validation video, forward only, shared by the processes.
    forward_per_clip = compute * FORWARD_SHARE / (batch * accum)
    val_loader = _loader_seconds(1, m.get("loader_items_per_second"), workers) or 0.0
    validation = cfg.epochs * val_videos * (forward_per_clip + (val_loader if workers == 0 else 0.0)) / world
    train_hours = (steps * step + validation) / 3600

    evaluate_hours = evaluate_gpu_hours = None
    if evaluate_probe is not None:
        e = evaluate_probe["measured"]
        eval_world = int(e.get("world_size") or 1)
        per_video = float(e["video_seconds"])
        eval_workers = int(e.get("loader_workers") or 0)
        eval_loader = _loader_seconds(1, e.get("loader_items_per_second"), eval_workers)
        if eval_loader is not None:
            per_video = per_video + eval_loader if eval_workers == 0 else max(per_video, eval_loader)
        evaluate_hours = val_videos * per_video / eval_world / 3600
        evaluate_gpu_hours = evaluate_hours * gpus

    peak, total = m.get("peak_memory_bytes"), m.get("device_memory_bytes")
    largest = int(batch * USABLE_MEMORY * total / peak) if peak and total else None
    return ModelPrice(
        model=cfg.name,
        gpus=gpus,
        global_batch=global_batch,
        steps=steps,
        step_seconds=compute,
        loader_seconds_per_step=loader,
        train_hours=train_hours,
        train_gpu_hours=train_hours * gpus,
        evaluate_hours=evaluate_hours,
        evaluate_gpu_hours=evaluate_gpu_hours,
        peak_memory_gib=peak / 2**30 if peak else None,
        device_memory_gib=total / 2**30 if total else None,
        largest_batch=largest,
        loader_keeps_up=None if loader is None else loader <= compute,
        clips_per_epoch=clips_per_epoch,
        val_videos=val_videos,
    )
