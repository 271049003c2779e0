"""A run's own log inside its output folder: `<folder>/train.log` or `<folder>/evaluate.log`.

The scheduler's log (a rule's `log:` file) belongs to the job, not to the model: Snakemake
deletes and recreates it before every job, including a rerun that the folder lock then refuses
because an orphaned run (its Snakemake was killed) still trains there. The orphan goes on
writing into the deleted file, and the log of the model that is finally kept is gone.

The folder log is the model's: it is opened only once the folder lock is held (a refused run
never touches it), opened for appending and never truncated or deleted by the workflow, and each
attempt (first run, preempted and resumed run, retry) starts with a header naming the code,
the software, the host and the command, and ends with its exit code. It holds rank 0's log
records, the same lines the job's stderr (the rule's `log:` file) shows. Records logged before
the lock is held (where the run runs, on which devices) are kept in memory and written first.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import shlex
import time
from pathlib import Path

from tokshift.attempts import exit_status, now, outcome_kind, where
from tokshift.errors import ExitCode, TokshiftError

__all__ = ["FOLDER_LOGS", "FolderLog", "drop_buffer", "folder_log_path", "start_buffer"]

# The log file of each command that holds an output folder.
FOLDER_LOGS = {"train": "train.log", "evaluate": "evaluate.log"}
_LOGGER = "tokshift"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def folder_log_path(folder: str | os.PathLike[str], command: str) -> Path:
    """Where `tokshift <command>` keeps the log of the runs that wrote `folder`."""
    return Path(folder) / FOLDER_LOGS.get(command, f"{command}.log")


_buffers: list[logging.Handler] = []  # at most one: the current run's


def start_buffer() -> logging.handlers.MemoryHandler:
    """Keep the records logged from now on until the folder log opens (rank 0, at process start).

    A buffer left by an earlier run in this process (one that failed before its folder was held)
    is dropped first.
    """
    for stale in list(_buffers):
        drop_buffer(stale)
    buffer = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1, flushOnClose=False)
    logging.getLogger(_LOGGER).addHandler(buffer)
    _buffers.append(buffer)
    return buffer


def _exit_code(exc: BaseException | None, code: int | None) -> int:
    """The exit code an attempt ends with: `code`, a project error's own, else as tokshift.cli would exit."""
    if exc is None:
        return ExitCode.OK if code is None else int(code)
    return int(exc.exit_code) if isinstance(exc, TokshiftError) else exit_status(exc)


class FolderLog:
    """Rank 0's records of one attempt, appended to the folder's log (`open` once the lock is held)."""

    def __init__(self, folder: str | os.PathLike[str], command: str, buffer: logging.Handler | None = None) -> None:
        self.path = folder_log_path(folder, command)
        self.command = command
        self.buffer = buffer
        self.handler: logging.FileHandler | None = None
        self._t0 = time.monotonic()

    def open(self) -> FolderLog:
        from tokshift import provenance

        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = [
            f"=== {now()} tokshift {self.command} attempt starts ({where()})",
            *provenance.header_lines(provenance.collect(self.command)),
            "command: " + shlex.join(["tokshift", *provenance.command_line()]),
        ]
        self._write("\n".join(header))
        handler = logging.FileHandler(self.path, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter(_FORMAT))
        logger = logging.getLogger(_LOGGER)
        if isinstance(self.buffer, logging.handlers.MemoryHandler):
            self.buffer.setTarget(handler)
            self.buffer.flush()
        drop_buffer(self.buffer)
        logger.addHandler(handler)
        self.handler = handler
        return self

    def close(self, exc: BaseException | None = None, code: int | None = None) -> None:
        """End the attempt: its exit code (from `code`, or the exception it ends with) and its duration."""
        if self.handler is None:
            return
        logging.getLogger(_LOGGER).removeHandler(self.handler)
        self.handler.close()
        self.handler = None
        status = _exit_code(exc, code)
        kind = outcome_kind(status)
        cause = f" ({type(exc).__name__}: {exc})" if exc is not None and not isinstance(exc, SystemExit) else ""
        seconds = time.monotonic() - self._t0
        self._write(
            f"=== {now()} tokshift {self.command} attempt ends: exit {status} {kind}{cause} after {seconds:.1f} s"
        )

    def _write(self, text: str) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")


def drop_buffer(buffer: logging.Handler | None) -> None:
    """Forget the buffered records of a run that never held its folder (refused, or failed before)."""
    if buffer is not None:
        logging.getLogger(_LOGGER).removeHandler(buffer)
        buffer.close()
        if buffer in _buffers:
            _buffers.remove(buffer)
