"""Argument types and the help layout shared by every `tokshift` sub-command.

Range checks live in the parser, so a bad number fails at once with a usage message that
names the option (``argument --workers: must be >= 1, got -1``) instead of failing deep
inside a run. This module imports only the standard library: building the parser for
``--help`` must stay fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "HelpFormatter",
    "add_command",
    "file_path",
    "fraction",
    "nonnegative_float",
    "int_in",
    "nonnegative_int",
    "positive_float",
    "positive_int",
]

# Actions whose default says nothing worth printing.
_NO_DEFAULT_SHOWN = (
    argparse._HelpAction,
    argparse._VersionAction,
    argparse._StoreTrueAction,
    argparse._StoreFalseAction,
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to an option's help, unless the option is required, a flag,
    has no default (its help then says what happens) or the help already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or action.required
            or isinstance(action, _NO_DEFAULT_SHOWN)
            or action.default in (None, argparse.SUPPRESS)
            or action.default == []
        ):
            return text
        return text + " (default: %(default)s)"


def add_command(subparsers: Any, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A sub-command parser with the shared help layout (defaults shown)."""
    return subparsers.add_parser(name, help=help, description=description or help, formatter_class=HelpFormatter)


def _number(text: str, kind: Callable[[str], Any]) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None


def positive_int(text: str) -> int:
    """An integer >= 1 (counts: clips, shards, batch sizes, processes)."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (indices, seeds, retries, worker counts where 0 means in-process)."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A number > 0 (seconds, minutes)."""
    value = _number(text, float)
    if not value > 0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """A number >= 0 (intervals where 0 means "every time")."""
    value = _number(text, float)
    if not value >= 0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A number from 0 to 1 (a share)."""
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An integer from ``low`` to ``high`` inclusive."""

    def parse(text: str) -> int:
        value = _number(text, int)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    parse.__name__ = f"int_in_{low}_{high}"
    return parse


def file_path(text: str) -> Path:
    """A path that must not be a directory; whether it exists is left to the command,
    whose message can say which step makes the file."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file; give the file inside it")
    return path
