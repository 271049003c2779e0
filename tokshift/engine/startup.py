"""The first steps of every training and evaluation process, before any shard is staged.

Crash traces and logging first, then the device: a job given GPUs that CUDA cannot use stops
here (GpuUnusable, exit 3), before it stages terabytes or waits for its peers. Rank 0 then logs
where it runs and on what (host, GPUs, driver, builds, precision), and the loader workers are
resolved once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tokshift.engine import distributed as D
from tokshift.errors import ExitCode

log = logging.getLogger("tokshift.engine")


@dataclass(frozen=True)
class Started:
    """What the rest of a run needs from its start."""

    launch: D.LaunchEnv
    device: torch.device
    reason: str  # why this device (logged, and named again when the process group forms)
    workers: int  # DataLoader workers per process
    # Rank 0's records from the start, kept for the folder's log until the folder lock is held.
    early_records: logging.Handler | None = None


def start_process(device: str, amp: str, workers: int | str, tf32: bool = True) -> Started:
    """Set up this process for `tokshift train` or `evaluate`: `--device`, `--amp` and `--workers` as given;
    `tf32` False keeps fp32 matmuls in full fp32 on a GPU."""
    from tokshift.engine.folder_log import start_buffer
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
    early = start_buffer() if launch.rank == 0 else None
    chosen, why = D.choose_device(device, launch.local_rank)
    amp_dtype, amp_why = amp_choice(amp, chosen)
    tf32 = use_tf32(chosen, amp_dtype, allowed=tf32)
    if launch.rank == 0:
        for line in environment_lines(chosen, why, precision_line(amp_why, chosen, tf32)):
            log.info("%s", line)
    return Started(launch, chosen, why, resolve_workers(workers, launch.local_processes), early)


def run_in_group(
    started: Started,
    out_dir: str | os.PathLike[str],
    command: str,
    body: Callable[[D.DistContext], int],
    failed_alone: Callable[[BaseException, D.DistContext], bool] = lambda exc, ctx: True,
) -> tuple[int, D.DistContext]:
    """Join the process group, hold `out_dir` for `command` and run `body(ctx)`; (exit code, ctx).

    Once the folder is held, rank 0 appends the attempt to the folder's own log
    (tokshift.engine.folder_log): a run refused here never writes to it.

    Setup collectives wait long; after the folder lock the short collective timeout is in force.
    A busy folder is every rank's news from rank 0: rank 0 raises it (reported once, by the CLI) and
    the others return OK, so a launcher that ends a step at the first non-zero exit never kills rank 0
    while it reports. A rank that fails on its own (`failed_alone`, default every exception) leaves
    without destroying the group, which could wait for peers in a collective, so its launcher ends
    the job at once.
    """
    from tokshift.engine.folder_lock import FolderBusy, exclusive_folder
    from tokshift.engine.folder_log import FolderLog, drop_buffer

    ctx = D.init_distributed(started.device, reason=started.reason)
    failed = True
    try:
        D.log_placement(ctx)
        with exclusive_folder(ctx, out_dir, command):
            folder_log = FolderLog(out_dir, command, started.early_records).open() if ctx.is_main else None
            try:
                D.set_collective_timeout(ctx)  # setup is over: a hung rank now ends the job in minutes
                code = body(ctx)
            except BaseException as exc:
                if folder_log is not None:
                    folder_log.close(exc)
                raise
            if folder_log is not None:
                folder_log.close(code=code)
        failed = False
        return code, ctx
    except FolderBusy:
        failed = False
        if ctx.is_main:
            raise
        return ExitCode.OK, ctx
    except BaseException as exc:
        failed = failed_alone(exc, ctx)
        raise
    finally:
        drop_buffer(started.early_records)  # written to the folder log, or never to be
        D.shutdown(ctx, failed)
