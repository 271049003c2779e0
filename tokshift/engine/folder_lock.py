"""One writer per output folder: an exclusive OS lock held for the whole run.

A run whose launcher died (`kill -9` of Snakemake) goes on as an orphan; a second run
started in the same folder would resume from the same checkpoints and the two would
overwrite each other's `model.pt` and logs. `tokshift train` and `tokshift evaluate`
therefore hold `flock` on `<folder>/.tokshift.lock` from start to end. The kernel drops
the lock when the holder exits in any way, SIGKILL included, so a lock is never stale
and the file never needs removing; it only records who holds it (PID, host, command),
so that a refused run can say whom to wait for. Only the lock itself counts: after a
crash the file still names the last holder.

Forked children (DataLoader workers) close their copy of the descriptor at once, so a
worker that outlives its killed parent for a few seconds does not keep the folder locked.

Distributed runs: rank 0 takes the lock for the whole job and tells the other ranks
whether it got it; a lock per node would collide with rank 0's wherever the lock is
cluster-wide. Whether it is cluster-wide depends on the file system: the Linux NFS
client turns flock into a whole-file POSIX lock kept by the server, so it holds across
nodes (a crashed node's lock lasts until the server's lease ends, about 90 s on NFSv4);
Lustre does so only when mounted with `-o flock` (`localflock` makes it node-local: a
second run is refused only if its rank 0 is on the same node). Where the file system
has no locks at all, the run goes on with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tokshift.engine.folder_log import folder_log_path
from tokshift.errors import RetryLater

log = logging.getLogger(__name__)

LOCK_NAME = ".tokshift.lock"
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}

_HELD: set[int] = set()  # descriptors of the locks this process holds


def _forget_in_child() -> None:
    """After fork: drop the child's copies (closing them does not unlock the parent's lock)."""
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_in_child)


class FolderBusy(RetryLater):
    """Another live process holds the folder's lock; the message names it and what to do."""


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        return json.loads(os.pread(fd, 65536, 0).decode("utf-8"))
    except (OSError, ValueError):
        return None


def busy_message(folder: Path, command: str, holder: dict[str, Any] | None) -> str:
    lock = folder / LOCK_NAME
    if not holder or "pid" not in holder:
        return (
            f"{folder} is in use by another process that is starting up (its PID is not in {lock} yet); "
            f"wait for it to finish, or find and stop it (fuser -v {lock}), then rerun `tokshift {command}`"
        )
    pid, host, held_by = holder["pid"], holder.get("host", "?"), holder.get("command", "?")
    where = "on this host" if host == socket.gethostname() else f"on host {host}"
    saves = " (training saves a resume checkpoint first)" if held_by == "train" else ""
    return (
        f"{folder} is in use by `tokshift {held_by}` (PID {pid} {where}, started {holder.get('started', '?')}): "
        f"only one run may write to a folder at a time. Wait for it to finish or, if it is left over from a "
        f"killed run, stop it with `kill {pid}` {where}{saves}, then rerun `tokshift {command}`. "
        f"Its log: {folder_log_path(folder, held_by)}. Lock file: {lock}"
    )


class FolderLock:
    """`flock(LOCK_EX | LOCK_NB)` on `<folder>/.tokshift.lock`; `acquire` raises FolderBusy at once."""

    def __init__(self, folder: str | os.PathLike[str], command: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command
        self.fd: int | None = None

    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)  # umask decides
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise FolderBusy(busy_message(self.folder, self.command, holder)) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno not in _NO_LOCKS:
                raise
            log.warning(
                "%s: the file system does not support locks (%s); running without the one-writer guard, "
                "so make sure no other run writes to this folder",
                self.path,
                exc.strerror,
            )
            return self
        self.fd = fd
        _HELD.add(fd)
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "argv": sys.argv,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
        return self

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        _HELD.discard(fd)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # still locked here: nobody reads a half-cleared file
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *_: object) -> None:
        self.release()


@contextlib.contextmanager
def exclusive_folder(ctx: Any, folder: str | os.PathLike[str], command: str) -> Iterator[FolderLock | None]:
    """Rank 0 holds the folder's lock for the block; every rank raises FolderBusy if it is taken.

    `ctx` is the run's DistContext (tokshift.engine.distributed); the other ranks learn
    rank 0's outcome by broadcast, so no rank starts work in a folder another run owns.
    """
    from tokshift.engine import distributed as D

    lock: FolderLock | None = None
    outcome: tuple[str, str] = ("ok", "")
    if ctx.is_main:
        try:
            lock = FolderLock(folder, command).acquire()
        except FolderBusy as exc:
            outcome = ("busy", str(exc))
        except Exception as exc:  # noqa: BLE001 - re-raised below once the other ranks know
            outcome = ("error", f"cannot lock {Path(folder) / LOCK_NAME}: {exc}")
    outcome = D.broadcast_object(ctx, outcome)
    if outcome[0] == "busy":
        raise FolderBusy(outcome[1])
    if outcome[0] == "error":
        raise OSError(outcome[1])
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
