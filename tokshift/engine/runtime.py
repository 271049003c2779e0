"""Small runtime helpers shared by training, evaluation and prediction."""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import random
import signal
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from tokshift.errors import BadInput, ExitCode

log = logging.getLogger("tokshift.engine")


def setup_logging(rank: int = 0, level: int = logging.INFO) -> None:
    """Plain timestamped log lines on stderr, tagged with the rank when distributed."""
    tag = (
        f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_STEP_NUM_TASKS", "1"))) > 1 else ""
    )
    root = logging.getLogger("tokshift")
    if not root.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter(f"%(asctime)s {tag}%(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(h)
    root.setLevel(level if rank == 0 else max(level, logging.WARNING))


def enable_crash_traces() -> None:
    """Print every thread's Python traceback to stderr (the job's log) on SIGSEGV/SIGBUS/SIGFPE/SIGABRT.

    A fatal signal kills the process before logging can say anything; without this a crash
    in native code (a damaged memory-mapped shard, a driver fault) leaves an empty log.
    """
    if not faulthandler.is_enabled():
        faulthandler.enable(file=sys.stderr, all_threads=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _native_bf16(device: torch.device) -> bool:
    """What torch.cuda.is_bf16_supported(including_emulation=False) answers for `device` (Ampere, 8.0, on)."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def amp_choice(choice: str, device: torch.device, bf16_supported: bool | None = None) -> tuple[torch.dtype | None, str]:
    """(autocast dtype, why) for `--amp choice`: `auto` is bf16 on a GPU that has it, else fp16, and
    fp32 (no autocast) on CPU. `bf16_supported` answers for the GPU (None: ask torch); explicit
    bf16 on a GPU without it raises GpuUnusable, as emulated bf16 runs at a fraction of the speed."""
    from tokshift.engine.gpu_env import GpuUnusable

    if choice not in ("auto", "bf16", "fp16", "off"):
        raise BadInput(f"--amp {choice!r}: expected auto, bf16, fp16 or off")
    if choice == "off":
        return None, "fp32 (--amp off)"
    if device.type != "cuda":
        if choice == "fp16":
            raise BadInput("--amp fp16 needs a CUDA device; use --amp bf16 or off on CPU")
        return (None, "fp32 (--amp auto on the CPU)") if choice == "auto" else (torch.bfloat16, "bf16 autocast")
    if bf16_supported is None:
        bf16_supported = _native_bf16(device)
    if choice == "fp16":
        return torch.float16, "fp16 autocast with loss scaling (--amp fp16)"
    if bf16_supported:
        return torch.bfloat16, f"bf16 autocast (--amp {choice})"
    if choice == "bf16":
        raise GpuUnusable(
            f"--amp bf16: the GPU {device} has no bf16 arithmetic (it needs compute capability 8.0, Ampere, "
            "or newer); use --amp fp16, or --amp auto, which picks fp16 on such a GPU"
        )
    return torch.float16, "fp16 autocast with loss scaling (--amp auto: this GPU has no bf16, compute capability < 8.0)"


def resolve_amp(choice: str, device: torch.device, bf16_supported: bool | None = None) -> torch.dtype | None:
    """autocast dtype of `amp_choice`: `auto` is bf16 on a GPU that has it, fp16 on one that does not,
    and fp32 (no autocast) on CPU."""
    return amp_choice(choice, device, bf16_supported)[0]


def use_tf32(device: torch.device, amp_dtype: torch.dtype | None, allowed: bool = True) -> bool:
    """Let fp32 matmuls and convolutions of a CUDA run use TF32 tensor cores (about 8x the fp32 rate
    on Ampere and later, 10 mantissa bits); returns whether TF32 is on. Autocast runs are left as they
    are. Not `allowed`: true fp32, as a faithful evaluation needs."""
    if device.type == "cuda" and amp_dtype is None:
        torch.backends.cuda.matmul.allow_tf32 = allowed
        torch.backends.cudnn.allow_tf32 = allowed
    return device.type == "cuda" and bool(torch.backends.cuda.matmul.allow_tf32)


def precision_line(amp_why: str, device: torch.device, tf32: bool) -> str:
    """The precision line of the job's first log lines."""
    if device.type != "cuda":
        return amp_why
    return f"{amp_why}; TF32 for fp32 matmuls {'on' if tf32 else 'off'}"


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_fused_attention(model: nn.Module, enabled: bool) -> int:
    """Switch timm's fused (scaled_dot_product_attention) kernels on or off; returns modules changed."""
    n = 0
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = bool(enabled)
            n += 1
    return n


#: `STEP[:SIGNAL]`: the process signals itself right after that optimizer step (SIGUSR1 unless named).
SIGNAL_AT_STEP_VAR = "TOKSHIFT_SIGNAL_AT_STEP"


def scheduled_signal(env: dict[str, str] | os._Environ[str] = os.environ) -> tuple[int, int] | None:
    """(step, signal) from TOKSHIFT_SIGNAL_AT_STEP, or None when it is unset.

    A fault at a chosen optimizer step: SIGUSR1 or SIGTERM go through the very handler a
    scheduler's signal reaches (a preemption), others do what they do to any process (SIGBUS
    crashes it). This is how tests interrupt a run deterministically instead of racing it from
    outside.
    """
    value = env.get(SIGNAL_AT_STEP_VAR, "").strip()
    if not value:
        return None
    step_text, _, name = value.partition(":")
    name = (name or "SIGUSR1").upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    signum = signal.Signals[name] if name in signal.Signals.__members__ else None
    if not step_text.isdigit() or int(step_text) < 1 or signum is None:
        raise BadInput(
            f"{SIGNAL_AT_STEP_VAR}={value!r}: expected STEP[:SIGNAL], STEP >= 1 and SIGNAL a signal name such as "
            "SIGUSR1 (the default) or SIGTERM; unset it for a normal run"
        )
    return int(step_text), int(signum)


class StopFlag:
    """Records SIGTERM/SIGUSR1 (sent by SLURM before a time limit) instead of dying at once."""

    SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s)

    def __init__(self, scheduled: tuple[int, int] | None = None, keeps: str = "a resume checkpoint") -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self.scheduled = scheduled  # (optimizer step, signal) to raise on this process
        self.keeps = keeps  # what the run saves before it exits, for the log line

    def after_step(self, step: int) -> None:
        """Raise the scheduled signal when this run has just finished that optimizer step."""
        if self.scheduled and step == self.scheduled[0]:
            name = signal.Signals(self.scheduled[1]).name
            log.info("%s: signalling this process with %s after optimizer step %d", SIGNAL_AT_STEP_VAR, name, step)
            os.kill(os.getpid(), self.scheduled[1])

    def _handler(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.signum is None:
            name, code = signal.Signals(signum).name, int(ExitCode.RETRY_LATER)
            log.warning("received %s: will save %s and exit %d", name, self.keeps, code)
        self.signum = signum

    @property
    def raised(self) -> bool:
        return self.signum is not None

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        for s in self.SIGNALS:
            self._old[s] = signal.signal(s, self._handler)
        try:
            yield self
        finally:
            for s, h in self._old.items():
                signal.signal(s, h)


def usable_cores(env: Mapping[str, str] = os.environ) -> int:
    """CPU cores this process may run on: its affinity (what SLURM or taskset granted), else all,
    and no more than SLURM_CPUS_PER_TASK: a cluster that does not bind tasks to cores leaves every
    task the whole node's affinity, while the job asked for (and is accounted) that many per task."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API on this platform
        cores = os.cpu_count() or 1
    per_task = env.get("SLURM_CPUS_PER_TASK", "").strip()
    return min(cores, int(per_task)) if per_task.isdigit() and int(per_task) > 0 else cores


def loader_workers(setting: int | str, local_processes: int = 1, cores: int | None = None) -> int:
    """DataLoader worker processes for one training or evaluation process.

    An integer passes through. `auto` gives each of the `local_processes` processes sharing
    `cores` (default: the cores this process may run on) an equal part and keeps one of them for
    the process itself (it runs the model): 0 workers (load in the main process) with <= 2 cores,
    else min(8, cores - 1); more than 8 workers only add memory, one batch is decoded by then.
    """
    if setting == "auto":
        cores = (usable_cores() if cores is None else cores) // max(1, int(local_processes))
        return 0 if cores <= 2 else min(8, cores - 1)
    if isinstance(setting, str) and setting.strip().isdigit():
        setting = int(setting)
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
        raise BadInput(f"--workers {setting!r}: expected a number of processes >= 0, or auto")
    return setting


def resolve_workers(setting: int | str, local_processes: int = 1) -> int:
    """`loader_workers` once at the start of a run, saying the number in the log (`auto` hides it)."""
    workers = loader_workers(setting, local_processes)
    log.info("data loading: %d worker process(es) per rank (--workers %s)", workers, setting)
    return workers


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader worker init: leave SIGTERM/SIGUSR1 to the main process, which shuts workers down."""
    for s in StopFlag.SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`key=value` strings -> dict, values read as YAML scalars (`0.01`, `null`, `[10, 15]`)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise BadInput(f"--override {item!r}: expected key=value, e.g. epochs=2")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise BadInput(f"--override {item!r}: value is not a YAML scalar ({exc})") from None
        if isinstance(parsed, str):  # YAML 1.1 reads `1e-3` as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out
