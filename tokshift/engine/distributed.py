"""Process-group setup that works the same alone, under torchrun and under srun.

One command line serves three launch modes: a single process (the demo and the
tests), `torchrun` (N processes on one node; it sets RANK/WORLD_SIZE/LOCAL_RANK/
MASTER_ADDR/MASTER_PORT) and `srun` (N tasks over several nodes; ranks come from
SLURM's environment). CPU runs use gloo, GPU runs NCCL.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from tokshift.errors import BadInput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in the job: read from torchrun's or SLURM's variables."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"  # "single" | "torchrun" | "slurm"
    #: Processes of this node that one launcher started on one shared CPU affinity: torchrun's
    #: LOCAL_WORLD_SIZE. srun binds each task to cores of its own, so there it is 1.
    local_processes: int = 1


def _first_slurm_host(nodelist: str) -> str:
    """The first host of a compressed SLURM node list (`node[01-04]` -> `node01`)."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    # Fallback without scontrol: expand the first range by hand.
    head = nodelist.split(",")[0]
    if "[" in head:
        prefix, rest = head.split("[", 1)
        first = rest.split(",")[0].split("-")[0].rstrip("]")
        return prefix + first
    return head


def detect_launch(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """Read rank, world size, local rank and master address from the environment.

    torchrun's variables win; otherwise a multi-task `srun` step is recognised by
    SLURM_PROCID with SLURM_STEP_NUM_TASKS (the batch script itself, which is no
    step of N tasks, runs as a single process).
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            source="torchrun",
            local_processes=int(env.get("LOCAL_WORLD_SIZE", 1)),
        )
    step_tasks = env.get("SLURM_STEP_NUM_TASKS")
    if "SLURM_PROCID" in env and step_tasks and int(step_tasks) > 1:
        addr = env.get("SLURM_LAUNCH_NODE_IPADDR")
        if not addr:
            nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")
            addr = _first_slurm_host(nodelist) if nodelist else "127.0.0.1"
        job_id = int(env.get("SLURM_JOB_ID", "0") or 0)
        return LaunchEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(step_tasks),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            master_addr=addr,
            master_port=int(env.get("MASTER_PORT", 15000 + job_id % 20000)),
            source="slurm",
        )
    return LaunchEnv()


@dataclass
class DistContext:
    """The process group this run uses and the device its model lives on."""

    launch: LaunchEnv
    device: torch.device
    backend: str | None  # None when running alone
    #: The node of every rank, in rank order (where a multi-node job really ran).
    nodes: tuple[str, ...] = ()

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    @property
    def is_main(self) -> bool:
        return self.launch.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def pick_device(choice: str, local_rank: int = 0) -> torch.device:
    """`auto` picks this rank's GPU when CUDA works, else the CPU; `cuda` insists on a GPU."""
    if choice not in ("auto", "cpu", "cuda"):
        raise BadInput(f"--device {choice!r}: expected auto, cpu or cuda")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise BadInput("--device cuda was requested but CUDA is not available; use --device cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def node_name() -> str:
    """The SLURM node this process runs on (several nodes may share one host), else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def init_distributed(device: str = "auto", timeout_minutes: float = 30.0) -> DistContext:
    """Join the process group described by the environment (no-op when alone)."""
    launch = detect_launch()
    dev = pick_device(device, launch.local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if launch.world_size <= 1:
        return DistContext(launch, dev, None, (node_name(),))
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", launch.master_addr)
        os.environ.setdefault("MASTER_PORT", str(launch.master_port))
        dist.init_process_group(
            backend=backend,
            init_method=f"tcp://{launch.master_addr}:{launch.master_port}",
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    ctx = DistContext(launch, dev, backend)
    return dataclasses.replace(ctx, nodes=tuple(all_gather_objects(ctx, node_name())))


def log_placement(ctx: DistContext) -> None:
    """Where the processes run (rank 0 says it for all): launcher, backend, device, node of every rank.

    Called once logging is set up (init_distributed runs before it, so it cannot log itself)."""
    if ctx.distributed and ctx.is_main:
        log.info("%d processes (%s, %s) on %s", ctx.world_size, ctx.launch.source, ctx.backend, ctx.device.type)
        log.info("ranks on nodes: %s", " ".join(f"{r}={n}" for r, n in enumerate(ctx.nodes)))


def shutdown(ctx: DistContext) -> None:
    """Leave the process group cleanly so the next launch can reuse the port."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(ctx: DistContext, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum or max) of a tensor on the context device; identity when alone."""
    if ctx.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t


def all_gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list when alone)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(ctx: DistContext, obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()
