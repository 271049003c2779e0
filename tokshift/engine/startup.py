"""The first steps of every training and evaluation process, before any shard is staged.

Crash traces and logging first, then the device: a job given GPUs that CUDA cannot use stops
here (GpuUnusable, exit 3), before it stages terabytes or waits for its peers. Rank 0 then logs
where it runs and on what (host, GPUs, driver, builds, precision), and the loader workers are
resolved once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from tokshift.engine import distributed as D

log = logging.getLogger("tokshift.engine")


@dataclass(frozen=True)
class Started:
    """What the rest of a run needs from its start."""

    launch: D.LaunchEnv
    device: torch.device
    reason: str  # why this device (logged, and named again when the process group forms)
    workers: int  # DataLoader workers per process


def start_process(device: str, amp: str, workers: int | str) -> Started:
    """Set up this process for `tokshift train` or `evaluate`: `--device`, `--amp` and `--workers` as given."""
    from tokshift.engine.gpu_env import environment_lines
    from tokshift.engine.runtime import (
        amp_choice,
        enable_crash_traces,
        precision_line,
        resolve_workers,
        setup_logging,
        use_tf32,
    )

    enable_crash_traces()
    launch = D.detect_launch()
    setup_logging(launch.rank)
    chosen, why = D.choose_device(device, launch.local_rank)
    amp_dtype, amp_why = amp_choice(amp, chosen)
    tf32 = use_tf32(chosen, amp_dtype)
    if launch.rank == 0:
        for line in environment_lines(chosen, why, precision_line(amp_why, chosen, tf32)):
            log.info("%s", line)
    return Started(launch, chosen, why, resolve_workers(workers, launch.local_processes))
