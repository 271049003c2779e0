"""What the jobs of a zoo entry ask a cluster for when config.yaml does not say.

Kept apart from the recipe (configs.py): the recipe says how a model is trained, this says
how big and how long its jobs are. A Kinetics-400 entry trains on its reference GPUs (the
per-GPU batch of the recipe was tuned for them); the demo entries are CPU jobs. The time
limit of a job comes from an estimate of the whole training, so that the chain of
resubmitted jobs (each resuming from the last checkpoint) covers it with room to spare.

Plain data and arithmetic only (no torch), like the rest of the zoo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tokshift.zoo.configs import ZooConfig

#: Zoos whose entries are trained and evaluated on CPUs: the generated demo.
CPU_ZOOS = frozenset({"demo"})

#: Kinetics-400 clips per training epoch and videos in the validation split (docs/reference.md).
K400_TRAIN_CLIPS = 240_000
K400_VAL_VIDEOS = 20_000
#: Frames of both splits, and bytes per packed frame at the default frames settings (short side 331,
#: JPEG q90) for 16:9 footage, the larger of the measured cases (README "Disk and time budget").
K400_FRAMES = 70_000_000
SHARD_BYTES_PER_FRAME = 47_900

#: Sustained throughput assumed per GPU, in TFLOP/s: about a fifth of an A100's bf16 peak, a
#: V100 running well. Slower than the estimate by up to 2x still fits (SAFETY below).
ASSUMED_TFLOPS_PER_GPU = 40.0
#: A training step costs forward + backward: about three forwards.
TRAIN_FORWARD_MULTIPLE = 3
#: The time limits hold twice the estimate.
SAFETY = 2.0
#: The longest time limit asked for by default (minutes): the maximum of most GPU partitions.
MAX_JOB_MINUTES = 24 * 60
#: The shortest (minutes): the first epoch's data loading and the checkpoint write.
MIN_JOB_MINUTES = 60
#: Time limit of a CPU (demo) job, minutes.
CPU_JOB_MINUTES = 60


@dataclass(frozen=True)
class ZooJob:
    """The default size of one zoo entry's train and evaluate jobs."""

    #: GPUs per job on one node (0: a CPU job).
    gpus: int
    #: Estimated hours of the whole training and of the 30-view evaluation on those GPUs
    #: (None for a CPU job: no estimate).
    train_hours: float | None
    evaluate_hours: float | None
    #: Time limit of one job, minutes.
    train_runtime: int
    evaluate_runtime: int


def limit_minutes(hours: float) -> int:
    """SAFETY x the estimate rounded up to whole hours, within [MIN_JOB_MINUTES, MAX_JOB_MINUTES]."""
    minutes = math.ceil(hours * SAFETY) * 60
    return max(MIN_JOB_MINUTES, min(MAX_JOB_MINUTES, minutes))


def _hours(gflops: float, forwards: float, gpus: int) -> float:
    return gflops * 1e9 * forwards / (gpus * ASSUMED_TFLOPS_PER_GPU * 1e12) / 3600


def zoo_job(cfg: ZooConfig) -> ZooJob:
    """The default job size of a zoo entry: its reference GPUs and time limits, or a CPU job."""
    if cfg.dataset in CPU_ZOOS or not cfg.paper_gflops:
        return ZooJob(0, None, None, CPU_JOB_MINUTES, CPU_JOB_MINUTES)
    train = _hours(cfg.paper_gflops, TRAIN_FORWARD_MULTIPLE * K400_TRAIN_CLIPS * cfg.epochs, cfg.gpus)
    evaluate = _hours(cfg.paper_gflops, 30 * K400_VAL_VIDEOS, cfg.gpus)
    return ZooJob(cfg.gpus, round(train, 1), round(evaluate, 1), limit_minutes(train), limit_minutes(evaluate))
