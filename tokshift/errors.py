"""The exit codes of every `tokshift` command and the exceptions that carry them.

A command that fails raises one of the four kinds below; `tokshift.cli.main` turns it into one
line on stderr and the kind's exit code, so a scheduler (Snakemake's retries, SLURM's requeue,
the attempts log) can tell "rerun later" from "fix the input first" by the code alone. Any
other exception is a bug and keeps its traceback. Standard library only: the CLI's help
prints these codes without loading anything heavy.
"""

from __future__ import annotations

import enum

__all__ = [
    "BadInput",
    "DataDamaged",
    "ExitCode",
    "InputMissing",
    "NotRetryable",
    "RetryLater",
    "TokshiftError",
]


class ExitCode(enum.IntEnum):
    """Exit codes shared by every command; `meaning` is the line `--help` prints."""

    OK = 0
    BUG = 1
    BAD_INPUT = 2
    NOT_RETRYABLE = 3
    DATA_DAMAGED = 5
    RETRY_LATER = 75  # EX_TEMPFAIL of sysexits.h, which schedulers read as "try again"

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]

    @property
    def rerun_repeats(self) -> bool:
        """Whether running the same command on the same files again can only fail the same way."""
        return self in (ExitCode.BAD_INPUT, ExitCode.NOT_RETRYABLE, ExitCode.DATA_DAMAGED)


_MEANINGS = {
    ExitCode.OK: "done",
    ExitCode.BUG: "unexpected error (a bug): Python's traceback is printed",
    ExitCode.BAD_INPUT: "bad usage or input: the message names it and what to change",
    ExitCode.NOT_RETRYABLE: "the run failed in a way a rerun repeats (e.g. the loss diverged)",
    ExitCode.DATA_DAMAGED: "a shard, download or video set is damaged: rebuild the named file",
    ExitCode.RETRY_LATER: "rerun later: preempted after checkpointing, output folder busy, network down, disk full",
}


class TokshiftError(Exception):
    """Base of the project's exceptions; a subclass's `exit_code` is the command's exit status."""

    exit_code: ExitCode = ExitCode.NOT_RETRYABLE


class BadInput(TokshiftError, ValueError):
    """Usage or input the command cannot work with; a ValueError, so callers catching that still do."""

    exit_code = ExitCode.BAD_INPUT


class InputMissing(BadInput, FileNotFoundError):
    """A file the command reads does not exist; the message says which step writes it."""


class DataDamaged(TokshiftError):
    """A file was written but its bytes are wrong (truncated, corrupt, other checksum)."""

    exit_code = ExitCode.DATA_DAMAGED


class NotRetryable(TokshiftError, RuntimeError):
    """The inputs are fine but the run fails, and would fail the same way again."""

    exit_code = ExitCode.NOT_RETRYABLE


class RetryLater(TokshiftError, RuntimeError):
    """A passing condition stopped the run; the same command run again can succeed."""

    exit_code = ExitCode.RETRY_LATER
