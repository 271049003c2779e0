"""Process-group setup that works the same alone, under torchrun and under srun.

One command line serves three launch modes: a single process (the demo and the
tests), `torchrun` (N processes on one node; it sets RANK/WORLD_SIZE/LOCAL_RANK/
MASTER_ADDR/MASTER_PORT) and `srun` (N tasks over several nodes; ranks come from
SLURM's environment). CPU runs use gloo, GPU runs NCCL.

Timeouts: joining the group and the setup collectives wait up to SETUP_TIMEOUT_MINUTES (nodes
start at different times); after setup a collective that some rank does not reach within
COLLECTIVE_TIMEOUT_MINUTES (env TOKSHIFT_COLLECTIVE_TIMEOUT_MINUTES) aborts the job, so a hung
rank costs minutes, not half an hour. Waits that are long by nature (rank 0 writing a checkpoint
or the final outputs, the end of an evaluation) run inside `long_wait`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import socket
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from tokshift.errors import BadInput

log = logging.getLogger(__name__)

#: Rendezvous and the collectives of setup (nodes that start minutes apart, a checkpoint to verify).
SETUP_TIMEOUT_MINUTES = 30.0
#: Any collective after setup: what a hung rank costs before the job is aborted.
COLLECTIVE_TIMEOUT_MINUTES = 10.0
COLLECTIVE_TIMEOUT_VAR = "TOKSHIFT_COLLECTIVE_TIMEOUT_MINUTES"
#: Collectives inside `long_wait`: rank 0 writing checkpoints and outputs, the end of an evaluation.
LONG_WAIT_MINUTES = 60.0


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


def slurm_master_port(env: Mapping[str, str]) -> int:
    """A port in 15000-34999 from SLURM_JOB_ID and SLURM_STEP_ID: steps of one job (and neighbouring
    jobs, whose ids are consecutive) get different ports when their first tasks share a node."""
    job = env.get("SLURM_JOB_ID", "")
    step = env.get("SLURM_STEP_ID", "")
    job_id = int(job) if job.isdigit() else 0
    step_id = int(step) if step.isdigit() else 0
    return 15000 + (job_id + 7919 * step_id) % 20000


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
        return LaunchEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(step_tasks),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            master_addr=addr,
            master_port=int(env.get("MASTER_PORT") or slurm_master_port(env)),
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
    #: The device of every rank, in rank order (`NVIDIA H100 80GB HBM3`, `cpu (<model>)`): provenance.
    devices: tuple[str, ...] = ()
    #: Why this device (the job's first log lines say it).
    device_reason: str = ""
    #: The process group's collective timeout now (set_collective_timeout, long_wait).
    timeout: datetime.timedelta | None = None

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


def choose_device(choice: str, local_rank: int = 0) -> tuple[torch.device, str]:
    """This rank's device for `--device choice` and why (tokshift.engine.gpu_env.choose_device).

    `auto` takes this rank's GPU when CUDA works and the CPU on a machine without GPUs, but a job
    that was given GPUs fails (GpuUnusable, exit 3) instead of running on the CPU; `cuda` insists
    on a GPU; `cpu` is always the CPU.
    """
    from tokshift.engine.gpu_env import real_choose_device

    return real_choose_device(choice, local_rank)


def pick_device(choice: str, local_rank: int = 0) -> torch.device:
    """The device of `choose_device`."""
    return choose_device(choice, local_rank)[0]


def node_name() -> str:
    """The SLURM node this process runs on (several nodes may share one host), else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def collective_timeout_minutes(env: Mapping[str, str] | None = None) -> float:
    """COLLECTIVE_TIMEOUT_MINUTES, or TOKSHIFT_COLLECTIVE_TIMEOUT_MINUTES when set (a fraction is fine)."""
    env = os.environ if env is None else env
    text = env.get(COLLECTIVE_TIMEOUT_VAR, "").strip()
    if not text:
        return COLLECTIVE_TIMEOUT_MINUTES
    try:
        minutes = float(text)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise BadInput(
            f"{COLLECTIVE_TIMEOUT_VAR}={text!r}: expected minutes > 0 (e.g. 10); unset it for the default "
            f"{COLLECTIVE_TIMEOUT_MINUTES:g}"
        )
    return minutes


def set_collective_timeout(ctx: DistContext, minutes: float | None = None) -> None:
    """Collectives from now on fail after `minutes` (default: collective_timeout_minutes()) without all ranks."""
    if not ctx.distributed or not dist.is_initialized():
        return
    timeout = datetime.timedelta(minutes=collective_timeout_minutes() if minutes is None else minutes)
    if timeout != ctx.timeout:
        setter = getattr(dist, "set_timeout", None)
        if setter is None:  # torch before set_timeout
            from torch.distributed.distributed_c10d import _set_pg_timeout as setter
        setter(timeout)
        ctx.timeout = timeout


@contextlib.contextmanager
def long_wait(ctx: DistContext, minutes: float = LONG_WAIT_MINUTES) -> Iterator[None]:
    """Collectives in the block may wait up to `minutes` (never less than the timeout outside it).

    For waits that are long by nature: the barrier while rank 0 writes a checkpoint or the final
    outputs, the gather at the end of an evaluation (the slowest rank's share). Every rank must
    enter and leave the block at the same point of the program.
    """
    before = ctx.timeout
    if before is not None and before.total_seconds() >= minutes * 60:
        yield
        return
    set_collective_timeout(ctx, minutes)
    try:
        yield
    finally:
        if before is not None:
            set_collective_timeout(ctx, before.total_seconds() / 60)


def init_distributed(
    device: str | torch.device = "auto", timeout_minutes: float = SETUP_TIMEOUT_MINUTES, reason: str = ""
) -> DistContext:
    """Join the process group described by the environment (no-op when alone).

    `device` is a --device choice, or the device the caller already chose (with its `reason`).
    Rendezvous and everything until the caller's `set_collective_timeout` wait up to
    `timeout_minutes`. For NCCL the group is bound to this rank's GPU (device_id), which
    creates the communicator now instead of at the first collective.
    """
    launch = detect_launch()
    if isinstance(device, torch.device):
        dev, why = device, reason
    else:
        dev, why = choose_device(device, launch.local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    from tokshift.provenance import device_label

    if launch.world_size <= 1:
        return DistContext(launch, dev, None, (node_name(),), (device_label(dev),), device_reason=why)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", launch.master_addr)
        os.environ.setdefault("MASTER_PORT", str(launch.master_port))
        dist.init_process_group(
            backend=backend,
            init_method=f"tcp://{launch.master_addr}:{launch.master_port}",
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=timeout,
            device_id=dev if backend == "nccl" else None,
        )
    ctx = DistContext(launch, dev, backend, device_reason=why, timeout=timeout)
    placed = all_gather_objects(ctx, (node_name(), device_label(dev)))
    return dataclasses.replace(ctx, nodes=tuple(n for n, _ in placed), devices=tuple(d for _, d in placed))


def log_placement(ctx: DistContext) -> None:
    """Where the processes run (rank 0 says it for all): launcher, backend, device, node of every rank.

    Called once logging is set up (init_distributed runs before it, so it cannot log itself)."""
    if ctx.distributed and ctx.is_main:
        log.info("%d processes (%s, %s) on %s", ctx.world_size, ctx.launch.source, ctx.backend, ctx.device.type)
        log.info("ranks on nodes: %s", " ".join(f"{r}={n}" for r, n in enumerate(ctx.nodes)))


def shutdown(ctx: DistContext, failed: bool = False) -> None:
    """Leave the process group cleanly so the next launch can reuse the port.

    A rank that `failed` on its own leaves without it: destroying an NCCL group may wait for peers
    that are still inside a collective, and this rank must exit now so that its launcher (torchrun,
    srun --kill-on-bad-exit) ends the job."""
    if ctx.distributed and dist.is_initialized() and not failed:
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
