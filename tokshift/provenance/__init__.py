"""Where an output came from: the code, the software, the machines and the job that made it.

Every job of the workflow (pack, train, evaluate, collect) records one *provenance block* in
what it writes (`model.pt`, `train_summary.json`, `metrics.json`, a shard's seal, the table's
`model_zoo.sources.json`) and prints its first lines at the top of its log. A reproduction
runs for weeks on shared machines; a number that cannot say which commit, which torch and
which GPUs made it cannot be trusted or repeated.

The block is built from what is running, never from what is merely installed: the version and
commit are those of the imported `tokshift` package (the checkout the workflow runs), library
versions come from the installed distributions' metadata (no import), and the CUDA, cuDNN and
NCCL versions only when torch is already loaded (train and evaluate). `tokshift provenance PATH`
prints the block of any output; `tokshift env` prints the block of the current environment.
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "NOT_A_CHECKOUT",
    "attempt_record",
    "code_info",
    "collect",
    "commit_label",
    "device_label",
    "finish",
    "header_lines",
    "short_commit",
]

#: The libraries whose versions decide the numbers (read from the installed distributions).
LIBRARIES: tuple[str, ...] = ("torch", "torchvision", "timm", "numpy", "pillow", "opencv-python-headless", "lmdb")
#: `git` answer when the package does not live in a git work tree (an installed wheel, a copied tree).
NOT_A_CHECKOUT = "not a git checkout"
#: Files whose changes do not make the code "dirty": the run's settings, recorded in full elsewhere.
SETTINGS_FILES: tuple[str, ...] = ("config.yaml",)
#: At most this many modified paths are listed (the flag says the rest).
MAX_MODIFIED = 20
SLURM_VARIABLES: dict[str, str] = {
    "job_id": "SLURM_JOB_ID",
    "array_job_id": "SLURM_ARRAY_JOB_ID",
    "array_task_id": "SLURM_ARRAY_TASK_ID",
    "restart_count": "SLURM_RESTART_COUNT",
    "nodelist": "SLURM_JOB_NODELIST",
    "partition": "SLURM_JOB_PARTITION",
    "cluster": "SLURM_CLUSTER_NAME",
}


def now() -> str:
    """The time, to the second, with its offset (ISO 8601)."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def package_dir() -> Path:
    """The folder of the `tokshift` package that is running."""
    return Path(__file__).resolve().parent.parent


def _git(root: Path, *args: str) -> str | None:
    """`git -C root ARGS` output, or None when git is missing or fails."""
    exe = shutil.which("git")
    if exe is None:
        return None
    try:
        proc = subprocess.run(
            [exe, "-C", str(root), *args], capture_output=True, text=True, timeout=60, env={**os.environ, "LC_ALL": "C"}
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def code_info(package: Path | None = None) -> dict[str, Any]:
    """The running code: version, package folder, git commit and whether tracked files differ from it.

    `dirty` counts tracked files only, and not config.yaml (the run's settings, recorded apart):
    a results folder or a new log never makes a tree dirty, an edited module does.
    """
    from tokshift import __version__

    package = package or package_dir()
    info: dict[str, Any] = {"version": __version__, "package": str(package), "commit": None, "dirty": None}
    top = _git(package, "rev-parse", "--show-toplevel")
    commit = _git(package, "rev-parse", "HEAD") if top else None
    if not top or not commit:
        info["git"] = NOT_A_CHECKOUT if shutil.which("git") else "git not found"
        return info
    status = _git(Path(top.strip()), "status", "--porcelain", "--untracked-files=no") or ""
    modified = [line[3:] for line in status.splitlines() if line[3:] and line[3:] not in SETTINGS_FILES]
    info.update(git=top.strip(), commit=commit.strip(), dirty=bool(modified), modified=modified[:MAX_MODIFIED])
    return info


def short_commit(info: Mapping[str, Any] | None) -> str:
    """`abcdef123456`, `abcdef123456+dirty`, or the reason there is none (a table cell)."""
    if not info:
        return "unknown"
    if not info.get("commit"):
        return str(info.get("git") or NOT_A_CHECKOUT)
    return info["commit"][:12] + ("+dirty" if info.get("dirty") else "")


def commit_label(info: Mapping[str, Any]) -> str:
    """The commit as a log line says it: `commit <sha>` with `, modified: a, b` when dirty."""
    if not info.get("commit"):
        return str(info.get("git") or NOT_A_CHECKOUT)
    if not info.get("dirty"):
        return f"commit {info['commit']}"
    shown = ", ".join(info.get("modified") or [])
    return f"commit {info['commit']}, modified: {shown}"


def software() -> dict[str, Any]:
    """Python and library versions; CUDA, cuDNN and NCCL too when torch is loaded."""
    out: dict[str, Any] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_loaded"] = str(torch.__version__)
        out["cuda"] = torch.version.cuda
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        out["cudnn"] = str(cudnn) if cudnn else None
        out["nccl"] = _nccl_version(torch)
    return out


def _nccl_version(torch: Any) -> str | None:
    if not torch.cuda.is_available():
        return None
    try:
        v = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):
        return None
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def cpu_model() -> str:
    """The processor's model name (it decides rounding on CPU: vector instructions differ)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_label(device: Any) -> str:
    """`NVIDIA H100 80GB HBM3` for a GPU, `cpu (<model name>)` for the CPU."""
    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()})"


def slurm_job(env: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The SLURM job this process runs in (id, array, restart count, nodes, partition), or None."""
    env = os.environ if env is None else env
    if not env.get("SLURM_JOB_ID"):
        return None
    return {key: env[var] for key, var in SLURM_VARIABLES.items() if env.get(var)}


_command_line: list[str] | None = None


def set_command_line(argv: Sequence[str]) -> None:
    """Record the arguments of the running `tokshift` command (tokshift.cli.main, also when run in-process)."""
    global _command_line
    _command_line = list(argv)


def command_line() -> list[str]:
    """The running `tokshift` command's arguments after `tokshift`; this process's own when none was recorded."""
    return list(_command_line) if _command_line is not None else sys.argv[1:]


def collect(
    command: str | None = None,
    devices: Sequence[str] | None = None,
    nodes: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The provenance block of this process: code, software, devices, host, SLURM job, start time.

    `devices` and `nodes` are per rank (a distributed run gathers them); by default this process's host.
    """
    return {
        "tokshift": code_info(),
        "software": software(),
        "command": command if command is not None else " ".join(sys.argv[1:]),
        "host": socket.gethostname(),
        "nodes": list(nodes) if nodes else [socket.gethostname()],
        "devices": list(devices) if devices else [],
        "slurm": slurm_job(env),
        "started": now(),
        "ended": None,
    }


def finish(block: dict[str, Any]) -> dict[str, Any]:
    """The block with its end time set (when the output it describes is written)."""
    return {**block, "ended": now()}


def attempt_record(block: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """One attempt of a resumed run, short: which code, where, which SLURM job, when (and `extra`)."""
    code = block.get("tokshift") or {}
    slurm = block.get("slurm") or {}
    return {
        "tokshift": code.get("version"),
        "commit": code.get("commit"),
        "dirty": code.get("dirty"),
        "torch": (block.get("software") or {}).get("torch"),
        "nodes": block.get("nodes"),
        "devices": block.get("devices"),
        "slurm_job_id": slurm.get("job_id"),
        "started": block.get("started"),
        "ended": block.get("ended"),
        **extra,
    }


def devices_summary(devices: Sequence[str]) -> str:
    """`2× NVIDIA A100-SXM4-80GB` (counted per name, in first-seen order); `unknown` when none."""
    if not devices:
        return "unknown"
    counts: dict[str, int] = {}
    for d in devices:
        counts[d] = counts.get(d, 0) + 1
    return " + ".join(f"{n}× {name}" for name, n in counts.items())


def header_lines(block: Mapping[str, Any]) -> list[str]:
    """The first lines of a job's log: the code, the software, where it runs."""
    code = block["tokshift"]
    sw = block["software"]
    libs = ", ".join(f"{k} {sw[k]}" for k in ("torch", "torchvision", "timm", "numpy") if sw.get(k))
    if sw.get("cuda"):
        libs += f", CUDA {sw['cuda']}"
    where = f"host {block['host']}"
    slurm = block.get("slurm")
    if slurm:
        where += f", SLURM job {slurm['job_id']}"
        if slurm.get("restart_count"):
            where += f" (restart {slurm['restart_count']})"
        if slurm.get("nodelist"):
            where += f" on {slurm['nodelist']}"
    return [
        f"tokshift {code['version']} from {code['package']} ({commit_label(code)})",
        f"python {sw['python']}, {libs}",
        f"{where}, started {block['started']}",
    ]


# ------------------------------------------------------------------ reading it back


def read_block(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """(the file read, its provenance) for any output: model.pt, a summary or metrics JSON, a shard, the table.

    A shard is read from its seal, a table from `<csv stem>.sources.json` beside it, a model's folder
    from the train_summary.json or metrics.json in it. Raises BadInput naming the file when it records none.
    """
    import json

    from tokshift.errors import BadInput, InputMissing

    p = Path(path)
    if p.is_dir() and p.suffix != ".lmdb":
        names = ("train_summary.json", "metrics.json", "model.pt", "config.json")  # config.json: an export
        found = [p / n for n in names if (p / n).is_file()]
        if not found:
            raise BadInput(
                f"{p}: a folder without train_summary.json, metrics.json, model.pt or an export's config.json;"
                " name an output file"
            )
        p = found[0]
    if p.suffix == ".lmdb":
        p = p.with_name(p.name + ".seal.json")
    elif p.suffix in (".csv", ".md") or p.name.endswith(".png"):
        p = p.with_name(p.stem + ".sources.json")
    if not p.exists():
        raise InputMissing(f"{p}: no such file; name a model.pt, train_summary.json, metrics.json, shard or table")
    if p.suffix in (".pt", ".pth"):
        from tokshift.checkpoints import read_torch_file

        data = read_torch_file(p)
    else:
        try:
            data = json.loads(p.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadInput(f"{p}: not a JSON file ({exc}); name a tokshift output") from None
    block = data.get("provenance") if isinstance(data, dict) else None
    if not isinstance(block, dict):
        raise BadInput(
            f"{p} records no provenance: it was written by a tokshift older than 0.1.0's provenance block,"
            " or is not a tokshift output; rerun the step that writes it to record one"
        )
    if p.name.endswith(".sources.json"):  # the table: the collect job, and each model's train/eval blocks
        block = {**block, "models": data.get("models", {})}
    return p, block
