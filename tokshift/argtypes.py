"""Argument types and the help layout shared by every `tokshift` sub-command.

Range checks live in the parser, so a bad number fails at once with a usage message that
names the option (``argument --workers: must be >= 1, got -1``) instead of failing deep
inside a run. This module imports only the standard library: building the parser for
``--help`` must stay fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from tokshift.errors import ExitCode

__all__ = [
    "PROGRESS_CHOICES",
    "HelpFormatter",
    "add_boolean",
    "add_command",
    "add_progress",
    "boolean",
    "exit_codes_epilog",
    "file_path",
    "fraction",
    "nonnegative_float",
    "int_in",
    "nonnegative_int",
    "optional_file",
    "optional_text",
    "options_from_args",
    "positive_float",
    "positive_int",
    "progress_bar",
    "workers_setting",
]

_T = TypeVar("_T")

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

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        """The exit-code table keeps one code a line; other text is filled as usual."""
        if not text.startswith(_EXIT_CODES_TITLE):
            return super()._fill_text(text, width, indent)
        hang = indent + " " * _EXIT_CODES_HANG
        rows = text.splitlines()
        return "\n".join(textwrap.fill(row, width, initial_indent=indent, subsequent_indent=hang) for row in rows)


_EXIT_CODES_TITLE = "exit codes:"
_EXIT_CODES_HANG = 21  # where a row's meaning starts: after "  75  RETRY_LATER    "

# What every command can return, whatever else it lists: success, a bug, bad usage or input.
_ALWAYS = (ExitCode.OK, ExitCode.BUG, ExitCode.BAD_INPUT)


def exit_codes_epilog(codes: Iterable[ExitCode] = ()) -> str:
    """The "exit codes:" table of a command's --help: the given codes and those every command has."""
    rows = [f"  {int(c):<4}{c.name:<15}{c.meaning}" for c in sorted({*_ALWAYS, *codes})]
    return "\n".join([_EXIT_CODES_TITLE, *rows])


def add_command(
    subparsers: Any, name: str, help: str, description: str | None = None, exit_codes: Iterable[ExitCode] = ()
) -> argparse.ArgumentParser:
    """A sub-command parser with the shared help layout (defaults shown) and its exit codes:
    ``exit_codes`` are those it returns besides OK, BUG and BAD_INPUT, which every command can."""
    return subparsers.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=exit_codes_epilog(exit_codes),
        formatter_class=HelpFormatter,
    )


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


# Options several commands share, and the dataclasses the handlers fill from them.

PROGRESS_CHOICES = ("auto", "bar", "off")

_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


def boolean(text: str) -> bool:
    """true or false (also yes/no, 1/0, on/off), so a workflow can spell an option's value."""
    value = text.strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_boolean(p: argparse.ArgumentParser, flag: str, default: bool, help: str) -> None:
    """``FLAG [true|false]``: bare FLAG means true, so both a person and a rule's shell line can use it."""
    p.add_argument(flag, nargs="?", const=True, default=default, type=boolean, metavar="true|false", help=help)


def optional_text(text: str) -> str | None:
    """A value where '' means "none", so a rule can always pass the option."""
    return text or None


def optional_file(text: str) -> Path | None:
    """A file path as :func:`file_path`, or '' for none."""
    return file_path(text) if text else None


def workers_setting(text: str) -> int | str:
    """A worker count >= 0, or ``auto`` (resolved by the engine from the CPU cores the process may use)."""
    return "auto" if text == "auto" else nonnegative_int(text)


def add_progress(p: argparse.ArgumentParser, off: str = "none") -> None:
    """The one ``--progress`` switch of every command with long work."""
    p.add_argument(
        "--progress",
        choices=PROGRESS_CHOICES,
        default=PROGRESS_CHOICES[0],
        help=f"auto: a progress bar when stderr is a terminal; bar: always one; off: {off}",
    )


def progress_bar(choice: str) -> bool | None:
    """``--progress`` as the ``progress`` argument of the work functions (None: a bar on a terminal only)."""
    return {"auto": None, "bar": True, "off": False}[choice]


def options_from_args(cls: type[_T], args: argparse.Namespace, **converted: Any) -> _T:
    """The dataclass ``cls`` built from the parsed options named like its fields.

    ``converted`` gives the fields whose value is not an option as parsed (a file to read, a
    switch mapped). A field with neither an option, a conversion nor a default, and a
    conversion for a field ``cls`` lacks, raise TypeError: a field added or renamed on one
    side cannot be dropped silently on the way from the command line.
    """
    fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    unknown = sorted(set(converted) - {f.name for f in fields})
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {', '.join(unknown)} to take a converted option")
    values: dict[str, Any] = {}
    for f in fields:
        if f.name in converted:
            values[f.name] = converted[f.name]
        elif hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TypeError(
                f"{cls.__name__}.{f.name} has no option (dest {f.name!r}), no conversion and no default: "
                "add the option to the command or a default to the field"
            )
    return cls(**values)
