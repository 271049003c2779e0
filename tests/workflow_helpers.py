"""Run the project's Snakemake workflow in a temporary copy of the repository, and read its plans."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKFLOW_PATHS = ("Snakefile", "rules", "workflow", "envs", "config.yaml", "slurm", "profiles")

# Local runs never talk to a SLURM cluster. The SLURM executor plugin asks `scontrol show config`
# when Snakemake loads it, and where SLURM's client is installed but no controller answers that
# call waits 10 s on every start; an empty configuration file makes it fail at once instead.
NO_SLURM = {"SLURM_CONF": "/dev/null"}


@dataclass(frozen=True)
class DemoRun:
    """The finished demo pipeline (conftest.py's `demo_run`): `snakemake --cores 2` in a copy of the workflow."""

    wf: Path
    seconds: float


def repo_config() -> dict:
    """The repository's config.yaml, as a fresh dict to edit."""
    import yaml

    return yaml.safe_load((REPO / "config.yaml").read_text())


def copy_workflow(dest: Path) -> Path:
    """Copy what `snakemake` reads (not results) into `dest`; the package stays installed."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_PATHS:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, dirs_exist_ok=True)
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def snakemake(
    workdir: Path,
    *args: str,
    timeout: float = 1800,
    check: bool = False,
    env: dict[str, str] | None = None,
    umask: int = -1,
) -> subprocess.CompletedProcess[str]:
    """Run the snakemake CLI of this interpreter in `workdir` (no cluster), capturing its output;
    `umask` >= 0 is set in the child only (the test process keeps its own)."""
    full_env = {**os.environ, **NO_SLURM, **(env or {})}
    cmd = [sys.executable, "-m", "snakemake", *args]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=full_env, umask=umask)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def planned_jobs(output: str) -> dict[str, int]:
    """Jobs per rule from the 'Job stats' table that Snakemake prints (a dry run's plan, or a run's)."""
    counts: dict[str, int] = {}
    in_table = False
    for line in output.splitlines():
        if line.startswith("Job stats"):
            in_table = True
            continue
        parts = line.split()
        if in_table and parts[:1] == ["total"]:
            in_table = False
        elif in_table and len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def touch_whole_plan(wf: Path) -> list[str]:
    """Every planned output as an empty file, recorded by Snakemake as made by its job (`--touch`).

    The result looks like a finished run to Snakemake, in seconds: for tests of what it plans next.
    Returns the outputs, relative to `wf`.
    """
    summary = snakemake(wf, "--summary", "--cores", "1", check=True).stdout
    outputs = [line.split("\t")[0] for line in summary.splitlines()[1:] if "\t" in line]
    for name in outputs:
        (wf / name).parent.mkdir(parents=True, exist_ok=True)
        (wf / name).write_bytes(b"")
    snakemake(wf, "--touch", "--cores", "1", check=True)  # in job order: every output newer than its inputs
    return outputs
