"""The attempts log: every run of a command appended to one file, and no rerun of a failure that must repeat.

A scheduler resubmits a failed job (Snakemake's retries, SLURM's requeue) whatever the cause.
That is right after a preemption (RETRY_LATER) but wasteful after bad input, a diverged loss
or a damaged shard: those fail again, after queueing for nodes. `tokshift --attempts-log FILE
COMMAND ...` appends each attempt to FILE: a start line, the run's log records (rank 0 only),
the traceback of a bug, the error line, and an end line with the exit code, its kind and a
fingerprint of the command line and its input files. When the last attempt recorded there
ended with a code whose rerun repeats (`ExitCode.rerun_repeats`) and the fingerprint is
unchanged, the new attempt does not run: it exits at once with the same code, saying why and
how to force a run. Every process of a distributed run takes that decision from the file;
only rank 0 writes to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tokshift.errors import ExitCode

__all__ = [
    "Attempt",
    "Outcome",
    "exit_status",
    "fingerprint",
    "is_rank_zero",
    "last_outcome",
    "now",
    "outcome_kind",
    "where",
]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_FIELD = re.compile(
    r"^=== (?P<time>\S+) tokshift (?P<command>\S+) ends: exit (?P<code>-?\d+) (?P<kind>\w+)"
    r".*\[fingerprint (?P<fingerprint>[0-9a-f]+)\]$"
)
_START = re.compile(r"^=== \S+ tokshift \S+ starts\b")


@dataclass(frozen=True)
class Outcome:
    """How a recorded attempt ended: its exit code, the fingerprint it ended with, its error line."""

    code: int
    fingerprint: str
    error: str | None


def outcome_kind(code: int) -> str:
    """The name an end line gives a code: the ExitCode's, or what a code outside the table means."""
    if code in ExitCode._value2member_map_:
        return ExitCode(code).name
    return "INTERRUPTED" if code == 130 else "OTHER"


def is_rank_zero() -> bool:
    """Whether this process is rank 0 of its run (or the only process): the one that writes the log.

    torchrun sets RANK, srun sets SLURM_PROCID (torchrun inside srun sets both)."""
    return all(os.environ.get(var, "0").strip() in ("", "0") for var in ("RANK", "SLURM_PROCID"))


def _file_state(item: str) -> list[object] | None:
    """What of one command-line item, if it names something on disk, decides whether a rerun differs.

    A file counts by size and modification time; an LMDB folder by its data.mdb. Any other folder
    counts by its existence only: an output folder changes with every run (the scheduler deletes
    the outputs of a failed job), which would make every failure look new.
    """
    if not item or item.startswith("-"):
        return None
    path = Path(item)
    try:
        if path.is_dir():
            data = path / "data.mdb"
            if path.suffix == ".lmdb" and data.is_file():
                st = data.stat()
                return [item, "lmdb", st.st_size, st.st_mtime_ns]
            return [item, "folder"]
        if path.is_file():
            st = path.stat()
            return [item, "file", st.st_size, st.st_mtime_ns]
    except OSError:  # a name too long, a folder we may not enter: not an input we can watch
        return None
    return None


def fingerprint(argv: list[str]) -> str:
    """A digest of the command line, the state of every file it names, and the tokshift version.

    ``argv`` is the command line after ``tokshift`` without the --attempts-log option; an item
    KEY=VALUE (e.g. ``--metrics name=path``) is also looked up by its VALUE.
    """
    from tokshift import __version__

    files = []
    for item in argv:
        for candidate in dict.fromkeys([item, item.partition("=")[2]]):
            state = _file_state(candidate)
            if state is not None:
                files.append(state)
    blob = json.dumps({"argv": argv, "files": files, "version": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def last_outcome(path: Path) -> Outcome | None:
    """How the last attempt recorded in ``path`` ended; None when there is none, or when it has no
    end line (it was killed, or is still running)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return None
    start = max((i for i, line in enumerate(lines) if _START.match(line)), default=-1)
    if start < 0:
        return None
    error = None
    for line in lines[start + 1 :]:
        if line.startswith("tokshift ") and ": error: " in line:
            error = line.split(": error: ", 1)[1]
        m = _FIELD.match(line)
        if m:
            return Outcome(int(m["code"]), m["fingerprint"], error)
    return None


def now() -> str:
    """UTC, to the second: the time of a log's start and end lines."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def where() -> str:
    """This process's host, PID and SLURM job, as a log's start line names them."""
    job = os.environ.get("SLURM_JOB_ID")
    return f"host {socket.gethostname()}, pid {os.getpid()}" + (f", SLURM job {job}" if job else "")


def _record_format() -> str:
    """The records' format in the file: tagged `[rank 0]` in a run of several processes, as on stderr."""
    processes = os.environ.get("WORLD_SIZE", os.environ.get("SLURM_STEP_NUM_TASKS", "1"))
    several = processes.isdigit() and int(processes) > 1
    return LOG_FORMAT.replace("%(levelname)s", "[rank 0] %(levelname)s") if several else LOG_FORMAT


def _shown_elsewhere(record: logging.LogRecord) -> bool:
    """Whether a logger below the root already prints ``record`` (the engine's own handler)."""
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None and logger is not logging.root:
        if logger.handlers:
            return True
        logger = logger.parent if logger.propagate else None
    return False


class Attempt:
    """One run of ``command`` recorded in ``path``: `refusal()` first, then the run inside ``with``.

    ``argv`` is the command line after ``tokshift``, without the --attempts-log option.
    """

    def __init__(self, path: str | os.PathLike[str], command: str, argv: list[str]) -> None:
        self.path = Path(path)
        self.command = command
        self.argv = list(argv)
        self.writer = is_rank_zero()
        self.code: int = ExitCode.BUG
        self.error: str | None = None
        self._handlers: list[logging.Handler] = []
        self._root_level = logging.root.level
        self._t0 = 0.0

    def refusal(self) -> tuple[int, str] | None:
        """(code, message) when the last recorded attempt failed in a way this one would repeat;
        the refusal is recorded as an attempt of its own."""
        last = last_outcome(self.path)
        if last is None or last.code not in ExitCode._value2member_map_ or not ExitCode(last.code).rerun_repeats:
            return None
        digest = fingerprint(self.argv)
        if last.fingerprint != digest:
            return None
        code = ExitCode(last.code)
        cause = f": {last.error}" if last.error else ""
        message = (
            f"not run again: the previous attempt recorded in {self.path} failed with exit {int(code)} "
            f"({code.name}{cause}) and the command line and its input files are unchanged, so it would "
            f"fail the same way; change the input, or delete {self.path} to force a run"
        )
        if self.writer:  # the cause goes on as the attempt's error, so later refusals name it too
            lines = [f"=== {now()} tokshift {self.command} starts ({where()}): {self._command_line()}", message]
            if last.error:
                lines.append(f"tokshift {self.command}: error: {last.error}")
            self._write("\n".join([*lines, self._end_line(int(code), digest, "refused")]))
        return int(code), message

    def failed(self, code: int, message: str) -> None:
        """The run failed with ``code``; ``message`` is its error line (what stderr shows)."""
        self.code, self.error = int(code), message

    def finished(self, code: int) -> None:
        self.code = int(code)

    def __enter__(self) -> Attempt:
        self._t0 = time.monotonic()
        if not self.writer:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write(f"=== {now()} tokshift {self.command} starts ({where()}): {self._command_line()}")
        root = logging.getLogger()
        if not root.handlers:  # what the commands' own logging setup would have done: lines on stderr
            console = logging.StreamHandler(sys.stderr)
            console.setFormatter(logging.Formatter(LOG_FORMAT))
            console.addFilter(lambda record: not _shown_elsewhere(record))
            self._handlers.append(console)
        record = logging.FileHandler(self.path, mode="a", encoding="utf-8")
        record.setFormatter(logging.Formatter(_record_format()))
        self._handlers.append(record)
        for handler in self._handlers:
            root.addHandler(handler)
        if root.getEffectiveLevel() > logging.INFO:  # the record holds the run's INFO lines too
            root.setLevel(logging.INFO)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self.code = exit_status(exc)
        if not self.writer:
            return
        root = logging.getLogger()
        for handler in self._handlers:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(self._root_level)
        if exc is not None and not isinstance(exc, SystemExit):
            self._write("".join(traceback.format_exception(exc_type, exc, tb)).rstrip("\n"))
        if self.error is not None:
            self._write(f"tokshift {self.command}: error: {self.error}")
        seconds = time.monotonic() - self._t0
        self._write(self._end_line(self.code, fingerprint(self.argv), f"after {seconds:.1f} s"))

    def _command_line(self) -> str:
        return shlex.join(["tokshift", *self.argv])

    def _end_line(self, code: int, digest: str, note: str) -> str:
        return (
            f"=== {now()} tokshift {self.command} ends: exit {code} {outcome_kind(code)} {note} [fingerprint {digest}]"
        )

    def _write(self, text: str) -> None:
        """Append whole lines in one write, so lines of two runs sharing the file do not interleave."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")


def exit_status(exc: BaseException) -> int:
    """The exit status an exception leaving `tokshift.cli.main` gives the process."""
    if isinstance(exc, SystemExit):
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else 1
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return ExitCode.BUG
