"""The local SLURM test cluster, and what tests read back from it.

`ensure_cluster` (behind conftest.py's `slurm_cluster` fixture) makes sure the cluster of
start-local-slurm.sh answers (starting it when run as root). In CI (CI=true) a cluster that
cannot be started fails the tests; elsewhere it skips them with the reason. Job facts are
read from `sacct` (the accounting database), never from Snakemake's own log.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
START_SCRIPT = HERE / "start-local-slurm.sh"
STOP_SCRIPT = HERE / "stop-local-slurm.sh"
PROFILE = REPO / "slurm"

SACCT_FIELDS = (
    "JobID",
    "JobName",
    "Comment",
    "State",
    "ExitCode",
    "Timelimit",
    "ReqTRES",
    "AllocTRES",
    "NNodes",
    "Partition",
    "WorkDir",
    "Elapsed",
    "NodeList",
)


@dataclass(frozen=True)
class Cluster:
    """What the tests need to know about the running cluster."""

    partition: str
    node: str
    cpus: int
    gpus: int
    #: The partition whose jobs may span several nodes, and its nodes (empty: one-node cluster).
    multi_partition: str = "multi"
    multi_nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SacctJob:
    """One job's allocation as the accounting database recorded it."""

    job_id: str
    name: str
    comment: str
    state: str
    exit_code: str
    timelimit_minutes: int
    req_tres: dict[str, str]
    alloc_tres: dict[str, str]
    nnodes: int
    partition: str
    workdir: str
    elapsed_seconds: int
    nodelist: str = ""

    @property
    def nodes(self) -> list[str]:
        """The node names of the allocation, expanded from SLURM's compressed list."""
        return expand_nodelist(self.nodelist)

    @property
    def rule(self) -> str:
        """The Snakemake rule, from the comment the executor plugin sets (rule_<name>[_wildcards_...])."""
        m = re.match(r"rule_(.+?)(?:_wildcards_.*)?$", self.comment)
        return m.group(1) if m else ""

    @property
    def wildcards(self) -> str:
        m = re.match(r"rule_.+?_wildcards_(.*)$", self.comment)
        return m.group(1) if m else ""

    @property
    def gpus(self) -> int:
        return int(self.req_tres.get("gres/gpu", 0))

    @property
    def mem_mb(self) -> int:
        return _mem_to_mb(self.req_tres.get("mem", "0M"))

    @property
    def cpus(self) -> int:
        return int(self.req_tres.get("cpu", 0))


def _mem_to_mb(text: str) -> int:
    m = re.fullmatch(r"([\d.]+)([KMGT]?)", text)
    if not m:
        raise ValueError(f"unexpected memory value from sacct: {text!r}")
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2)]
    return round(float(m.group(1)) * scale)


def _timelimit_minutes_seconds(text: str) -> int:
    """sacct's [D-]HH:MM:SS in seconds (-1 for UNLIMITED)."""
    if text in ("UNLIMITED", "Partition_Limit", ""):
        return -1
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
    parts = [int(p) for p in text.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts
    return ((days * 24 + h) * 60 + m) * 60 + s


def _timelimit_minutes(text: str) -> int:
    """sacct's Timelimit in whole minutes, as `runtime` asked for it (-1 for UNLIMITED)."""
    sec = _timelimit_minutes_seconds(text)
    return sec if sec < 0 else -(-sec // 60)


def _tres(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if "=" in item)


def expand_nodelist(nodelist: str) -> list[str]:
    """`vm,vm-[2-3]` -> ['vm', 'vm-2', 'vm-3'] (scontrol does the expansion)."""
    if not nodelist or nodelist in ("None assigned", "(null)"):
        return []
    out = _run(["scontrol", "show", "hostnames", nodelist])
    if out.returncode != 0:
        raise RuntimeError(f"scontrol show hostnames {nodelist}: {out.stderr.strip()}")
    return out.stdout.split()


def _run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def cluster_status() -> tuple[Cluster | None, str]:
    """The running cluster, or None and why it is not usable."""
    if not shutil.which("sinfo") or not shutil.which("sacct"):
        return None, "SLURM client commands (sinfo, sacct) are not installed"
    try:
        info = _run(["sinfo", "-h", "-N", "-o", "%P|%N|%t|%c|%G"])
    except subprocess.TimeoutExpired:
        return None, "sinfo timed out (slurmctld not answering)"
    if info.returncode != 0:
        return None, f"sinfo failed: {info.stderr.strip()}"
    usable = []
    for line in info.stdout.splitlines():
        partition, node, state, cpus, gres = line.split("|")
        if state.rstrip("*") in ("idle", "mix", "alloc"):
            usable.append((partition, node, cpus, gres))
    default = [u for u in usable if u[0].endswith("*")] or usable
    if not default:
        return None, f"no usable node in sinfo output: {info.stdout.strip()!r}"
    partition, node, cpus, gres = default[0]
    m = re.search(r"gpu:(?:[^:,]+:)?(\d+)", gres)
    acct = _run(["sacct", "-n", "-X", "-S", "now"])
    if acct.returncode != 0:
        return None, f"sacct failed (accounting database down?): {acct.stderr.strip()}"
    multi = tuple(sorted(n for p, n, _, _ in usable if p.rstrip("*") == "multi"))
    return Cluster(partition.rstrip("*"), node, int(cpus), int(m.group(1)) if m else 0, "multi", multi), ""


def start_cluster(timeout: float = 900) -> str:
    """Run start-local-slurm.sh; returns its output (raises CalledProcessError on failure)."""
    res = subprocess.run(["bash", str(START_SCRIPT)], capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise subprocess.CalledProcessError(res.returncode, res.args, res.stdout, res.stderr)
    return res.stdout


def ensure_cluster() -> Cluster:
    """The running cluster, started if needed and possible; fails in CI, skips elsewhere."""
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    cluster, why = cluster_status()
    if cluster:
        return cluster
    if os.geteuid() == 0:
        try:
            start_cluster()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            why = f"{START_SCRIPT.name} failed: {getattr(e, 'stderr', '') or e}"
        else:
            cluster, why = cluster_status()
            if cluster:
                return cluster
    else:
        why += f"; run `sudo bash {START_SCRIPT.relative_to(REPO)}` to start the local test cluster"
    if in_ci:
        pytest.fail(f"local SLURM cluster unavailable in CI: {why}", pytrace=False)
    pytest.skip(f"local SLURM cluster unavailable: {why}")


def sacct_jobs(
    *, name_prefix: str | None = None, job_ids: list[str] | None = None, since: str = "now-1days"
) -> list[SacctJob]:
    """Jobs (allocations, not steps) from sacct, optionally only those whose name starts with a prefix."""
    cmd = ["sacct", "-n", "-X", "-P", "-a", "-S", since, "-o", ",".join(f"{f}%300" for f in SACCT_FIELDS)]
    if job_ids:
        cmd += ["-j", ",".join(job_ids)]
    out = _run(cmd)
    if out.returncode != 0:
        raise RuntimeError(f"sacct failed: {out.stderr.strip()}")
    jobs = []
    for line in out.stdout.splitlines():
        row = dict(zip(SACCT_FIELDS, line.split("|")))
        if name_prefix and not row["JobName"].startswith(name_prefix):
            continue
        jobs.append(
            SacctJob(
                job_id=row["JobID"],
                name=row["JobName"],
                comment=row["Comment"],
                state=row["State"],
                exit_code=row["ExitCode"],
                timelimit_minutes=_timelimit_minutes(row["Timelimit"]),
                req_tres=_tres(row["ReqTRES"]),
                alloc_tres=_tres(row["AllocTRES"]),
                nnodes=int(row["NNodes"] or 0),
                partition=row["Partition"],
                workdir=row["WorkDir"],
                elapsed_seconds=_timelimit_minutes_seconds(row["Elapsed"]),
                nodelist=row["NodeList"],
            )
        )
    return jobs


def wait_until_recorded(name_prefix: str, count: int, timeout: float = 30) -> list[SacctJob]:
    """sacct rows for a finished run; slurmdbd may lag slurmctld by a moment."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = sacct_jobs(name_prefix=name_prefix)
        done = [j for j in jobs if j.state not in ("PENDING", "RUNNING", "REQUEUED")]
        if len(done) >= count or time.monotonic() > deadline:
            return jobs
        time.sleep(1)


def unique_prefix(tag: str) -> str:
    """A job-name prefix that tells this test's jobs apart in sacct."""
    return f"tt{tag}{os.getpid()}x{int(time.time() * 1000) % 10**9}"


def snakemake_slurm(
    workdir: Path,
    *args: str,
    prefix: str,
    env: dict[str, str] | None = None,
    timeout: float = 900,
    profile: Path | str = PROFILE,
) -> subprocess.CompletedProcess[str]:
    """Run `snakemake --profile <repo>/slurm` in `workdir`, as a user would from the repository root.

    On timeout Snakemake gets SIGINT first, which cancels its SLURM jobs (a SIGKILL would orphan them).
    """
    cmd = [sys.executable, "-m", "snakemake", "--profile", str(profile), "--slurm-jobname-prefix", prefix, *args]
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        err += f"\n[test] snakemake stopped after the {timeout:.0f} s timeout"
    (workdir / "snakemake-slurm.log").write_text(out + err)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@dataclass(frozen=True)
class SacctStep:
    """One step of a job (batch, or an srun step) as the accounting database recorded it."""

    step_id: str
    state: str
    exit_code: int
    signal: int
    ntasks: int


def sacct_steps(job_id: str) -> list[SacctStep]:
    """The steps of one job: `<id>.batch` and every `<id>.<n>` started by srun."""
    out = _run(["sacct", "-n", "-P", "-j", job_id, "-o", "JobID%50,State%40,ExitCode,NTasks"])
    if out.returncode != 0:
        raise RuntimeError(f"sacct failed: {out.stderr.strip()}")
    steps = []
    for line in out.stdout.splitlines():
        jid, state, code, ntasks = line.split("|")
        if "." not in jid:
            continue
        rc, sig = (int(x) for x in code.split(":"))
        steps.append(SacctStep(jid, state.split()[0], rc, sig, int(ntasks or 0)))
    return steps
