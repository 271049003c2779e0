"""Copy a job's frame shards to node-local storage before reading them (`frames.stage_to`).

Thousands of random reads per second from a shared file system are what slows a cluster
training down; the same reads from a node-local NVMe or `$TMPDIR` are cheap. One process per
node (local rank 0) copies the shards and their seals, checks each copy against its seal, and
marks the folder complete; every rank then reads the copies of its own node. When the
destination lacks the space, cannot be written or the copy fails, the job logs why and reads
the shards in place: staging changes where bytes are read from, never what is read.

Staging runs before the process group exists, so a copy of terabytes never counts against a
collective's timeout. The other ranks of the node wait for a ready marker file written by their
local rank 0 ("ok", or "failed: reason": then they read in place at once); the marker's name
holds an id of this launch (`launch_id`), so a marker left by an earlier attempt is never taken
for this one's.

The folder's name is the same for every attempt of a job on a node
(`<stage_to>/tokshift-stage-<hash of the output folder and the shard list>-<node>`), and a copy
already there is reused file by file when it matches its source's seal ("reusing staged copy"):
a preempted run resumed on the same node does not copy again. The copies are kept when the run
exits 75 (RETRY_LATER: it will be resumed) and removed when it ends in any other way. Local rank 0
holds an OS lock (flock) on the folder while it copies and while the run reads it; a second run
that finds the folder locked (an orphan of the same job still running) reads in place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tokshift.data.store import ShardCorruptError, ShardReader, read_seal, seal_path
from tokshift.engine import distributed as D
from tokshift.errors import ExitCode

log = logging.getLogger("tokshift.engine")

#: Written last into a staged folder: its presence means every copy was checked.
COMPLETE = "staged.json"
#: Free space kept on the destination beyond the shards themselves.
HEADROOM = 0.05
#: Test hook: seconds the copier sleeps after copying, before it says the copies are ready.
DELAY_VAR = "TOKSHIFT_STAGE_DELAY_SECONDS"
#: Variables that tell one launch (one attempt) of a job from another; with the launcher's PID.
LAUNCH_VARS = (
    "SLURM_JOB_ID",
    "SLURM_STEP_ID",
    "SLURM_RESTART_COUNT",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT",
)
#: How often a waiting rank looks for the ready marker, and says it is still waiting.
POLL_SECONDS = 0.2
WAIT_LOG_SECONDS = 300.0


class _Stopped(Exception):
    """A stop signal arrived while copying: the rest is copied by the next attempt."""


@dataclass
class Staged:
    """The shard lists to read, and whether the caller wants the copies kept (set `keep`)."""

    shards: dict[str, list[str]]
    staged: bool = False
    keep: bool = False
    folder: Path | None = None
    notes: list[str] = field(default_factory=list)


def shard_bytes(paths: Sequence[str | os.PathLike[str]]) -> int:
    """What the shards and their seals occupy."""
    return sum(Path(p).stat().st_size + seal_path(p).stat().st_size for p in paths)


def resolve_destination(stage_to: str) -> Path | None:
    """`stage_to` with `$VARS` and `~` expanded in the job's own environment; None if a variable is unset."""
    expanded = os.path.expanduser(os.path.expandvars(stage_to))
    if "$" in expanded:
        log.warning("staging: %s names an unset variable (%s); reading the shards in place", stage_to, expanded)
        return None
    return Path(expanded)


def staging_plan(groups: Mapping[str, Sequence[str]], dest: Path) -> dict[str, list[tuple[Path, Path]]]:
    """(source, copy) per shard of each group: `<dest>/<group>/<i>-<name>` (train and val shards share names)."""
    return {g: [(Path(p), dest / g / f"{i}-{Path(p).name}") for i, p in enumerate(v)] for g, v in groups.items()}


def folder_name(groups: Mapping[str, Sequence[str]], owner: str | os.PathLike[str], node: str) -> str:
    """`tokshift-stage-<hash>-<node>`: the same for every attempt of one run (output folder and shards) on one node."""
    key = {"owner": os.path.abspath(owner), "groups": {g: [os.path.abspath(p) for p in v] for g, v in groups.items()}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    safe_node = "".join(c if c.isalnum() or c in "-_." else "_" for c in node)
    return f"tokshift-stage-{digest}-{safe_node}"


def launch_id(environ: Mapping[str, str] | None = None, parent: int | None = None) -> str:
    """An id of this launch, shared by the ranks of one node: SLURM's job, step and requeue count,
    torchrun's run id and restart count (those set) and the launcher's PID (slurmstepd or the
    torchrun agent, parent of every rank of the node). A later attempt gets another id."""
    env = os.environ if environ is None else environ
    parts = [f"{k}={env[k]}" for k in LAUNCH_VARS if env.get(k)]
    parts.append(f"ppid={os.getppid() if parent is None else parent}")
    return hashlib.sha256(";".join(parts).encode("utf-8")).hexdigest()[:12]


def _matches_seal(src: Path, dst: Path) -> bool:
    """Whether `dst` is a finished copy of `src`: the same seal, and the size the seal names."""
    try:
        seal = read_seal(src)
        return read_seal(dst) == seal and dst.stat().st_size == seal["size"]
    except (OSError, ShardCorruptError):
        return False


def _check_copy(dst: Path) -> None:
    """Size and header of a copy against its seal (frames are checked as they are read)."""
    if dst.stat().st_size != read_seal(dst)["size"]:
        raise ShardCorruptError(dst, "the copy's size differs from its seal")
    reader = ShardReader(dst)
    try:
        reader.header  # noqa: B018 - reading it checks the header's checksum against the seal
    finally:
        reader.close()


def _delay_seconds() -> float:
    text = os.environ.get(DELAY_VAR, "").strip()
    try:
        return max(0.0, float(text)) if text else 0.0
    except ValueError:
        return 0.0


def _stage(
    pairs: Sequence[tuple[Path, Path]],
    dest: Path,
    free_bytes: Callable[[Path], int],
    stopped: Callable[[], bool],
) -> str | None:
    """Copy (or reuse) and check the shards under `dest`; None when staged, else why not (logged)."""
    (dest / COMPLETE).unlink(missing_ok=True)
    reused = [(src, dst) for src, dst in pairs if _matches_seal(src, dst)]
    todo = [(src, dst) for src, dst in pairs if (src, dst) not in reused]
    need = shard_bytes([src for src, _ in todo])
    try:
        dest.mkdir(parents=True, exist_ok=True)
        free = free_bytes(dest)
    except OSError as err:
        log.warning("staging: cannot use %s (%s); reading the shards in place", dest, err)
        return f"cannot use {dest} ({err})"
    if free < need * (1 + HEADROOM):
        log.warning(
            "staging: %s has %.2f GB free, the shards need %.2f GB (+%d %%); reading the shards in place",
            dest,
            free / 1e9,
            need / 1e9,
            round(HEADROOM * 100),
        )
        shutil.rmtree(dest, ignore_errors=True)
        return f"{dest} has too little space"
    if reused:
        log.info(
            "staging: reusing staged copy of %d of %d shards in %s (each matches its source's seal)",
            len(reused),
            len(pairs),
            dest,
        )
    t0 = time.perf_counter()
    try:
        for src, dst in todo:
            if stopped():
                raise _Stopped
            dst.parent.mkdir(parents=True, exist_ok=True)
            seal_path(dst).unlink(missing_ok=True)  # no seal until the shard is whole: a cut copy is never reused
            shutil.copyfile(src, dst)
            shutil.copyfile(seal_path(src), seal_path(dst))
        for _, dst in pairs:
            _check_copy(dst)
    except _Stopped:
        log.warning("staging: stopped by a signal after copying part of the shards to %s; reading in place", dest)
        return "stopped by a signal"
    except (OSError, ShardCorruptError) as err:
        log.warning("staging: copying to %s failed (%s); reading the shards in place", dest, err)
        shutil.rmtree(dest, ignore_errors=True)
        return f"copying to {dest} failed ({err})"
    if todo and _delay_seconds():
        time.sleep(_delay_seconds())
    seconds = time.perf_counter() - t0
    record = {"copies": {str(dst): str(src) for src, dst in pairs}, "bytes": need, "seconds": round(seconds, 3)}
    (dest / COMPLETE).write_text(json.dumps(record, indent=1), encoding="utf-8")
    if todo:
        log.info(
            "staging: copied %d shards (%.1f MB) from %s to %s in %.1f s (%.0f MB/s), sizes checked against "
            "their seals",
            len(todo),
            need / 1e6,
            todo[0][0].parent,
            dest,
            seconds,
            need / 1e6 / max(seconds, 1e-9),
        )
    return None


def copy_shards(
    pairs: Sequence[tuple[Path, Path]],
    dest: Path,
    free_bytes: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free,
    stopped: Callable[[], bool] = lambda: False,
) -> bool:
    """Copy and check the shards (source, copy) under `dest`, reusing copies that match their
    source's seal; False (the reason logged) when not staged."""
    return _stage(pairs, dest, free_bytes, stopped) is None


class _FolderLock:
    """flock on the staged folder itself (re-taken if the folder was replaced while waiting)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.fd: int | None = None

    def try_acquire(self) -> bool:
        """True when this process now holds the folder; False when another process does."""
        while True:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return False
                raise
            try:
                same = os.path.samestat(os.stat(self.folder), os.fstat(fd))
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return True
            os.close(fd)  # removed by its last holder while we waited: lock the new one

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _marker_paths(root: Path, name: str) -> list[Path]:
    """Where the ready marker may be: beside the staged folder, or in the temp folder when that
    cannot be written (the node's ranks share both)."""
    return [root / name, Path(tempfile.gettempdir()) / name]


def _write_marker(paths: Sequence[Path], text: str) -> Path | None:
    for path in paths:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
            return path
        except OSError:
            continue
    log.warning("staging: cannot write the ready marker %s; the other ranks of this node will wait", paths[0])
    return None


def _wait_for_marker(paths: Sequence[Path]) -> str:
    t0 = time.monotonic()
    said = t0
    while True:
        for path in paths:
            try:
                return path.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                continue
        now = time.monotonic()
        if now - said >= WAIT_LOG_SECONDS:
            said = now
            log.info("staging: waiting %.0f s for local rank 0 to stage the shards (%s)", now - t0, paths[0])
        time.sleep(POLL_SECONDS)


@contextlib.contextmanager
def staged_shards(
    groups: Mapping[str, Sequence[str]],
    stage_to: str | None,
    launch: D.LaunchEnv,
    owner: str | os.PathLike[str],
    stopped: Callable[[], bool] = lambda: False,
) -> Iterator[Staged]:
    """The shard lists in `groups` (e.g. train, val), read from node-local copies when staging works.

    Call it before the process group exists: no collective is used. `owner` is the run's output
    folder (it names the staged folder with the shard list and the node). Local rank 0 copies;
    the node's other ranks wait for its ready marker. The caller sets `keep` on the yielded
    Staged when the run exits 75; an exception whose exit code is 75 keeps the copies too.
    """
    originals = {k: [str(p) for p in v] for k, v in groups.items()}
    root = resolve_destination(stage_to) if stage_to and any(originals.values()) else None
    if root is None:
        yield Staged(originals)
        return
    dest = root / folder_name(originals, owner, D.node_name())
    plan = staging_plan(originals, dest)
    copies = {g: [str(dst) for _, dst in pairs] for g, pairs in plan.items()}
    markers = _marker_paths(root, f"{dest.name}.{launch_id()}.ready") if launch.world_size > 1 else []
    if launch.local_rank != 0:
        answer = _wait_for_marker(markers)
        ok = answer == "ok"
        if not ok:
            log.warning("staging: local rank 0 did not stage (%s); reading the shards in place", answer)
        yield Staged(copies if ok else originals, staged=ok, folder=dest)
        return

    lock = _FolderLock(dest)
    reason: str | None = "not started"
    held = False
    written: Path | None = None
    try:
        try:
            held = lock.try_acquire()
        except OSError as err:
            reason = f"cannot lock {dest} ({err})"
            log.warning("staging: %s; reading the shards in place", reason)
        else:
            if held:
                reason = _stage([pair for pairs in plan.values() for pair in pairs], dest, _free_bytes, stopped)
            else:
                reason = f"{dest} is in use by another run on this node"
                log.warning("staging: %s; reading the shards in place", reason)
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        if held:
            shutil.rmtree(dest, ignore_errors=True)
            lock.release()
        raise
    finally:
        if markers:
            written = _write_marker(markers, "ok" if reason is None else f"failed: {reason}")
    result = Staged(copies if reason is None else originals, staged=reason is None, folder=dest)
    try:
        yield result
    except BaseException as exc:
        if getattr(exc, "exit_code", None) == ExitCode.RETRY_LATER:
            result.keep = True
        raise
    finally:
        if written is not None:
            written.unlink(missing_ok=True)
        if held:
            if result.keep and (dest / COMPLETE).exists():
                log.info("staging: kept %s for the next attempt (exit %d)", dest, ExitCode.RETRY_LATER)
            elif result.keep:
                log.info("staging: kept the partial copy in %s for the next attempt", dest)
            else:
                shutil.rmtree(dest, ignore_errors=True)
                if result.staged:
                    log.info("staging: removed %s", dest)
            lock.release()


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free
