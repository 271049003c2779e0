"""Whether this process can use the GPUs its job was given, and what it runs on.

A job that was given GPUs must use them or fail at once: a torch build without CUDA, a driver
older than the build's CUDA needs, or a GPU the build has no kernels for would otherwise make
`--device auto` train on the CPU for days, then be preempted and resubmitted into the same
mistake. `GpuUnusable` (exit 3, NOT_RETRYABLE) names the cause and what to install instead.

The checks are pure functions of (environment, `TorchFacts`, driver text) so they can be tested
on any machine by feeding them a GPU job's environment; `torch_facts()` and `driver_text()` read
the real ones. `describe_environment` is the block of lines every train and evaluate job logs
first (host, GPUs, driver, torch and CUDA build, cuDNN, NCCL, precision, the device and why).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tokshift.errors import BadInput, NotRetryable

__all__ = [
    "MIN_DRIVER",
    "GpuUnusable",
    "TorchFacts",
    "choose_device",
    "claimed_gpus",
    "cuda_problem",
    "current_facts",
    "describe_environment",
    "driver_text",
    "driver_version",
    "environment_lines",
    "has_kernels",
    "real_choose_device",
    "torch_facts",
]

#: The oldest Linux driver each CUDA major version runs on (with minor-version compatibility),
#: from NVIDIA's CUDA compatibility documentation (CUDA Toolkit release notes, "CUDA Toolkit and
#: Minimum Required Driver Version for CUDA Minor Version Compatibility"). docs/gpu.md repeats it.
MIN_DRIVER: dict[int, str] = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}

#: CUDA_VISIBLE_DEVICES values that give this process no GPU.
_HIDDEN = {"", "-1", "none", "nodevfiles"}

#: The variables that say this process was given GPUs, in the order they are named. SLURM sets
#: CUDA_VISIBLE_DEVICES, SLURM_STEP_GPUS and SLURM_GPUS_ON_NODE from the GPUs allocated to the
#: step on this node; a person who sets CUDA_VISIBLE_DEVICES names GPUs to use. Not trusted:
#: SLURM_JOB_GPUS, SLURM_GPUS, SLURM_GPUS_PER_NODE and SLURM_GPUS_PER_TASK (the job's allocation
#: or request, inherited by a step started without GPUs) and NVIDIA_VISIBLE_DEVICES (set by
#: container images whatever the host has).
CLAIMS = ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE")

_PIP = "pip install torch --index-url https://download.pytorch.org/whl/cu{tag}"


class GpuUnusable(NotRetryable):
    """The job was given GPUs (or --device cuda / --amp bf16 asked for one) but CUDA cannot use them."""


@dataclass(frozen=True)
class TorchFacts:
    """What torch says about CUDA on this machine (read by `torch_facts`, made up by tests)."""

    version: str  # torch.__version__
    cuda: str | None  # torch.version.cuda: the CUDA this build was compiled for; None for a CPU-only build
    available: bool = False  # torch.cuda.is_available()
    error: str | None = None  # why CUDA could not be initialised (torch's own message)
    arch_list: tuple[str, ...] = ()  # torch.cuda.get_arch_list(): sm_XY kernels and compute_XY PTX in the build
    names: tuple[str, ...] = ()  # one per visible GPU
    capabilities: tuple[tuple[int, int], ...] = ()  # compute capability per visible GPU
    memory: tuple[int, ...] = ()  # bytes per visible GPU
    cudnn: int | None = None
    nccl: str | None = None
    threads: int = 1

    @property
    def count(self) -> int:
        return len(self.names)


def torch_facts() -> TorchFacts:
    """The real `TorchFacts` of this process; reads device properties only (no CUDA context is made)."""
    cuda = torch.version.cuda
    available, error = False, None
    if cuda is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about an old driver; the reason is taken below
            available = torch.cuda.is_available()
            if not available:
                try:
                    torch.cuda.init()
                except Exception as exc:  # noqa: BLE001 - its message is the cause we report
                    error = str(exc)
    names: list[str] = []
    caps: list[tuple[int, int]] = []
    mem: list[int] = []
    arch: tuple[str, ...] = ()
    nccl = None
    if available:
        arch = tuple(torch.cuda.get_arch_list())
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            names.append(props.name)
            caps.append((props.major, props.minor))
            mem.append(int(props.total_memory))
    if cuda is not None:
        try:
            nccl = ".".join(str(v) for v in torch.cuda.nccl.version())
        except Exception:  # noqa: BLE001 - a build without NCCL
            nccl = None
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return TorchFacts(
        version=torch.__version__,
        cuda=cuda,
        available=available,
        error=error,
        arch_list=arch,
        names=tuple(names),
        capabilities=tuple(caps),
        memory=tuple(mem),
        cudnn=cudnn,
        nccl=nccl,
        threads=torch.get_num_threads(),
    )


def driver_text() -> str | None:
    """/proc/driver/nvidia/version, else `nvidia-smi`'s driver version; None when neither exists."""
    proc = Path("/proc/driver/nvidia/version")
    try:
        return proc.read_text(encoding="utf-8", errors="replace")
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 and out.stdout.strip() else None


def driver_version(text: str | None) -> str | None:
    """The driver version in /proc/driver/nvidia/version's or nvidia-smi's text (`535.104.05`)."""
    if not text:
        return None
    m = re.search(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)", text) or re.search(
        r"^\s*(\d+\.\d+(?:\.\d+)?)\s*$", text, flags=re.M
    )
    return m.group(1) if m else None


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v))


def claimed_gpus(environ: Mapping[str, str]) -> str | None:
    """`VAR=value` of the variables that give this process GPUs (see CLAIMS), or None.

    A CUDA_VISIBLE_DEVICES that hides every GPU (empty, -1, NoDevFiles) wins over SLURM's
    counts: whoever set it meant this process to have none.
    """
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip().lower() in _HIDDEN:
        return None
    found = []
    for var in CLAIMS:
        value = environ.get(var, "").strip()
        if not value or value.lower() in _HIDDEN:
            continue
        if var == "SLURM_GPUS_ON_NODE" and not (value.isdigit() and int(value) > 0):
            continue
        found.append(f"{var}={value}")
    return ", ".join(found) or None


def _arch(name: str) -> tuple[str, int, int, bool] | None:
    """`sm_86` -> ("sm", 8, 6, False); `sm_90a` -> ("sm", 9, 0, True); `compute_90` -> ("compute", 9, 0, False)."""
    m = re.fullmatch(r"(sm|compute)_(\d+)([a-z]?)", name)
    if not m:
        return None
    n = int(m.group(2))
    return m.group(1), n // 10, n % 10, bool(m.group(3))


def has_kernels(capability: tuple[int, int], arch_list: Sequence[str]) -> bool:
    """Whether a build with `arch_list` runs on a GPU of `capability`.

    A cubin for sm_XY runs on X.Z with Z >= Y (same major); PTX for compute_XY is compiled by the
    driver for any X.Y or newer; an arch-specific sm_XYa runs on X.Y only.
    """
    major, minor = capability
    for name in arch_list:
        parsed = _arch(name)
        if parsed is None:
            continue
        kind, a_major, a_minor, specific = parsed
        if kind == "sm" and (
            (a_major, a_minor) == (major, minor) or (not specific and a_major == major and a_minor <= minor)
        ):
            return True
        if kind == "compute" and not specific and (a_major, a_minor) <= (major, minor):
            return True
    return False


def _cuda_tag(cuda: str) -> str:
    """`12.1` -> `121`: the suffix of the wheel index named after the CUDA version."""
    return "".join(cuda.split(".")[:2])


def cuda_problem(facts: TorchFacts, driver: str | None) -> str | None:
    """Why this torch cannot use the GPUs here (one sentence with what to do), or None when it can.

    `driver` is the text of /proc/driver/nvidia/version or nvidia-smi (`driver_text()`).
    """
    version = driver_version(driver)
    if facts.cuda is None:
        return (
            f"torch {facts.version} is a CPU-only build; install the CUDA build that matches the driver"
            f"{f' ({version})' if version else ''}: {_PIP.format(tag='XYZ')} (docs/gpu.md lists which XYZ)"
        )
    major = _version_tuple(facts.cuda)[0]
    minimum = MIN_DRIVER.get(major)
    if version and minimum and _version_tuple(version) < _version_tuple(minimum):
        older = ", ".join(f"CUDA {m}.x needs >= {d}" for m, d in sorted(MIN_DRIVER.items()) if m < major)
        return (
            f"the NVIDIA driver {version} is older than {minimum}, the minimum for CUDA {major}.x that torch "
            f"{facts.version} was built with; install a torch built for an older CUDA ({older}), e.g. "
            f"{_PIP.format(tag='121' if major > 12 else '118')}, or have the driver updated"
        )
    if not facts.available:
        cause = " ".join((facts.error or "torch.cuda.is_available() is False").split())
        where = (
            f"driver {version}"
            if version
            else "driver: none found, no /proc/driver/nvidia/version and no nvidia-smi; is this a GPU node?"
        )
        return f"torch {facts.version} (CUDA {facts.cuda}) finds no usable GPU: {cause} ({where})"
    if facts.count == 0:
        return f"torch {facts.version} (CUDA {facts.cuda}) sees no GPU (check CUDA_VISIBLE_DEVICES)"
    for i, (name, cap) in enumerate(zip(facts.names, facts.capabilities)):
        if facts.arch_list and not has_kernels(cap, facts.arch_list):
            return (
                f"GPU {i} ({name}) has compute capability {cap[0]}.{cap[1]}, and torch {facts.version} has "
                f"kernels only for {' '.join(facts.arch_list)}; install a torch build that includes "
                f"sm_{cap[0]}{cap[1]} (docs/gpu.md: e.g. the cu126 or cu118 builds still include sm_70, V100)"
            )
    return None


def choose_device(
    choice: str,
    local_rank: int,
    environ: Mapping[str, str],
    facts: TorchFacts,
    driver: str | None,
) -> tuple[torch.device, str]:
    """The device for `--device choice` and why; GpuUnusable when GPUs are wanted and CUDA fails.

    `auto` on a job that was given GPUs (claimed_gpus) must use them, never fall back to the CPU;
    `auto` elsewhere uses a working GPU if there is one; `cpu` is always the CPU.
    """
    if choice not in ("auto", "cpu", "cuda"):
        raise BadInput(f"--device {choice!r}: expected auto, cpu or cuda")
    claim = claimed_gpus(environ)
    if choice == "cpu":
        unused = f" (the job's GPUs stay unused: {claim})" if claim else ""
        return torch.device("cpu"), f"--device cpu{unused}"
    problem = cuda_problem(facts, driver)
    if problem is None:
        index = local_rank % facts.count
        why = f"--device {choice}" + (f", the job was given GPUs ({claim})" if claim else ", a GPU works here")
        return torch.device("cuda", index), f"{why}; local rank {local_rank} takes GPU {index} of {facts.count}"
    if choice == "auto" and claim is None:
        return torch.device("cpu"), "--device auto and the job was given no GPU (" + ", ".join(CLAIMS) + " unset)"
    asked = f"this job was given GPUs ({claim})" if claim else "--device cuda was given"
    raise GpuUnusable(
        f"{asked} but CUDA cannot use them: {problem}. Pass --device cpu to run on the CPU instead (slow)"
    )


def describe_environment(
    facts: TorchFacts,
    driver: str | None,
    device: torch.device,
    reason: str,
    precision: str,
    host: str | None = None,
) -> list[str]:
    """The lines a job logs first: where it runs, on what, with which builds and precision, and why."""
    lines = [f"host {host or socket.gethostname()}"]
    if facts.count:
        gpus = "; ".join(
            f"{i}: {name}, {mem / 2**30:.1f} GiB, compute capability {cap[0]}.{cap[1]}"
            for i, (name, mem, cap) in enumerate(zip(facts.names, facts.memory, facts.capabilities))
        )
        lines.append(f"GPUs visible: {facts.count} ({gpus})")
    else:
        cause = " ".join(facts.error.split()).split(". ")[0] if facts.error else ""
        lines.append("GPUs visible: none" + (f" ({cause})" if cause else ""))
    lines.append(f"NVIDIA driver: {driver_version(driver) or 'none found'}")
    cudnn = facts.cudnn if facts.cudnn is not None else "none"
    lines.append(
        f"torch {facts.version}, CUDA build {facts.cuda or 'none (CPU-only build)'}, cuDNN {cudnn}, "
        f"NCCL {facts.nccl or 'none'}"
    )
    if device.type == "cpu":
        lines.append(f"CPU: {facts.threads} torch threads")
    lines.append(f"device {device}: {reason}")
    lines.append(f"precision: {precision}")
    return lines


def current_facts() -> tuple[TorchFacts, str | None]:
    """(torch_facts(), driver_text()) of this process."""
    return torch_facts(), driver_text()


def environment_lines(device: torch.device, reason: str, precision: str) -> list[str]:
    """`describe_environment` for this process."""
    facts, driver = current_facts()
    return describe_environment(facts, driver, device, reason, precision)


def real_choose_device(choice: str, local_rank: int = 0) -> tuple[torch.device, str]:
    """`choose_device` with this process's environment, torch and driver."""
    facts, driver = current_facts()
    return choose_device(choice, local_rank, os.environ, facts, driver)
