"""Static checks where Snakemake runs, before anything is submitted: does the cluster take these jobs?

Each job shape of the plan (a model's train or evaluate job: partition, account, QoS, GRES or
constraint, time limit) is checked against what `sinfo` and `sacctmgr` say. Where those commands
are missing (not a SLURM login node) the checks are skipped with a note, not failed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from tokshift.errors import RetryLater
from tokshift.preflight.probe import Check

__all__ = [
    "DEFAULT",
    "Partition",
    "SlurmUnreachable",
    "associations",
    "disk_check",
    "job_checks",
    "minutes",
    "partitions",
]


@dataclass(frozen=True)
class Partition:
    name: str
    time_limit_minutes: float | None  # None: infinite
    gres: tuple[str, ...]  # each node's GRES, e.g. "gpu:a100:4"
    features: tuple[str, ...]


def minutes(limit: str) -> float | None:
    """A SLURM time limit (`[days-]hours:minutes:seconds`, `minutes`, `infinite`) in minutes."""
    limit = limit.strip()
    if limit in ("infinite", "UNLIMITED", "n/a", ""):
        return None
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if len(parts) == 1:
        total = parts[0]
    elif len(parts) == 2:
        total = parts[0] + parts[1] / 60
    else:
        total = parts[0] * 60 + parts[1] + parts[2] / 60
    return total + (int(days) * 24 * 60 if days else 0)


DEFAULT = "(default)"  # the key under which partitions() also files the cluster's default partition


class SlurmUnreachable(RetryLater):
    """sinfo is installed but no controller answers (the preflight reports it as a failed check)."""


def partitions(run: Any = subprocess.run) -> dict[str, Partition] | None:
    """Every partition `sinfo` lists, the default one also under DEFAULT (None when sinfo is not installed)."""
    if shutil.which("sinfo") is None:
        return None
    proc = run(["sinfo", "-h", "-o", "%P|%l|%G|%f"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise SlurmUnreachable(lines[-1] if lines else "no output")
    found: dict[str, dict[str, Any]] = {}
    default = None
    for line in proc.stdout.splitlines():
        if line.count("|") != 3:
            continue
        name, limit, gres, features = (p.strip() for p in line.split("|"))
        if name.endswith("*"):
            name = default = name[:-1]
        entry = found.setdefault(name, {"limit": minutes(limit), "gres": set(), "features": set()})
        entry["gres"].update(g for g in gres.split(",") if g and g != "(null)")
        entry["features"].update(f for f in features.split(",") if f and f != "(null)")
    out = {
        n: Partition(n, e["limit"], tuple(sorted(e["gres"])), tuple(sorted(e["features"]))) for n, e in found.items()
    }
    if default is not None:
        out[DEFAULT] = out[default]
    return out


def _gres_types(gres: tuple[str, ...]) -> set[str]:
    """`gpu:a100:4(S:0-1)` -> {"gpu", "gpu:a100"}."""
    out = set()
    for g in gres:
        parts = re.sub(r"\(.*\)", "", g).split(":")
        out.add(parts[0])
        if len(parts) == 3:
            out.add(f"{parts[0]}:{parts[1]}")
    return out


def associations(run: Any = subprocess.run) -> list[tuple[str, str]] | None:
    """(account, QoS) pairs of this user (None when sacctmgr is missing or has no accounting)."""
    if shutil.which("sacctmgr") is None:
        return None
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
    proc = run(
        ["sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", "format=account,qos"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        return None
    pairs = []
    for line in proc.stdout.splitlines():
        account, _, qos = line.partition("|")
        for q in qos.split(",") or [""]:
            pairs.append((account.strip(), q.strip()))
    return pairs


def job_checks(
    jobs: dict[str, dict[str, Any]], parts: dict[str, Partition] | None, assoc: list[tuple[str, str]] | None
) -> list[Check]:
    """Checks of each job shape (`name` -> partition, account, qos, gres, constraint, runtime in minutes)."""
    if parts is None:
        return [Check("slurm", True, "skipped: sinfo is not installed here (not a SLURM login node)")]
    checks = []
    for name, job in sorted(jobs.items()):
        partition = job.get("partition") or DEFAULT
        if partition not in parts:
            known = ", ".join(sorted(p for p in parts if p != DEFAULT)) or "none"
            checks.append(
                Check(
                    f"{name}: partition",
                    False,
                    f"partition {partition!r} does not exist (sinfo lists: {known})",
                    "set resources.slurm_partition (or the job's) to one of them",
                )
            )
            continue
        p = parts[partition]
        runtime = float(job.get("runtime") or 0)
        if p.time_limit_minutes is not None and runtime > p.time_limit_minutes:
            checks.append(
                Check(
                    f"{name}: time limit",
                    False,
                    f"runtime {runtime:g} min is above partition {partition!r}'s limit of {p.time_limit_minutes:g} min",
                    f"set resources.{job.get('rule', 'train')}.runtime (or resources.per_model) to at most "
                    f"{p.time_limit_minutes:g}; resubmission resumes from the last checkpoint",
                )
            )
        else:
            checks.append(Check(f"{name}: time limit", True, f"{runtime:g} min within {partition!r}"))
        gres = job.get("gres")
        if gres:
            wanted = ":".join(gres.split(":")[:-1]) if gres.count(":") >= 1 else gres
            have = _gres_types(p.gres)
            ok = wanted in have
            checks.append(
                Check(
                    f"{name}: gres",
                    ok,
                    f"{gres} {'offered' if ok else 'not offered'} by the nodes of {partition!r} "
                    f"(they have: {', '.join(p.gres) or 'no GRES'})",
                    "" if ok else "set resources.gpu_model to a GPU type those nodes have, or choose another partition",
                )
            )
        constraint = job.get("constraint")
        if constraint:
            ok = all(f in p.features for f in re.split(r"[&|,]", constraint) if f)
            checks.append(
                Check(
                    f"{name}: constraint",
                    ok,
                    f"{constraint} {'matches' if ok else 'matches no'} node feature of {partition!r} "
                    f"({', '.join(p.features) or 'none'})",
                    "" if ok else "set resources.gpu_constraint to features those nodes have",
                )
            )
        account, qos = job.get("account"), job.get("qos")
        if assoc is not None and (account or qos):
            ok = any((not account or a == account) and (not qos or q == qos) for a, q in assoc)
            checks.append(
                Check(
                    f"{name}: account",
                    ok,
                    f"account {account or '-'} / QoS {qos or '-'} {'is' if ok else 'is not'} one of yours",
                    "" if ok else "set resources.slurm_account / slurm_qos to a pair `sacctmgr show assoc` lists",
                )
            )
    return checks


def disk_check(path: str, need_bytes: int | None, what: str) -> Check:
    """Free space under `path` (the first existing parent) against `need_bytes`."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    free = shutil.disk_usage(probe).free
    if need_bytes is None:
        return Check(f"disk {path}", True, f"{free / 2**30:.1f} GiB free ({what})")
    ok = free >= need_bytes
    return Check(
        f"disk {path}",
        ok,
        f"{free / 2**30:.1f} GiB free, {need_bytes / 2**30:.1f} GiB needed ({what})",
        "" if ok else "free space there or move the folder to a larger file system",
    )


def url_check(key: str, url: str, timeout: float = 20) -> Check:
    """Whether `url` (config key `key`) answers: a HEAD request, then a one-byte GET where HEAD is refused."""
    import urllib.error
    import urllib.request

    status, why = None, ""
    for method, headers in (("HEAD", {}), ("GET", {"Range": "bytes=0-0"})):
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, method=method, headers=headers), timeout=timeout
            ) as r:
                status = r.status
        except urllib.error.HTTPError as err:
            status, why = err.code, f"HTTP {err.code}"
        except (urllib.error.URLError, OSError) as err:
            status, why = None, str(getattr(err, "reason", err))
        if status is not None and status < 400:
            return Check(f"url {key}", True, f"{url} answers ({method} {status})")
        if status not in (403, 405, 501):  # only a refused HEAD is worth a GET
            break
    return Check(
        f"url {key}",
        False,
        f"{url} does not answer here ({why or status})",
        f"check {key} in config.yaml, or download the file on a machine that reaches it and put it in place",
    )
