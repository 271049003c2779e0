"""The `tokshift` command.

Each stage owns its sub-commands in its package's ``commands`` module; a module joins the
CLI by exposing ``register(subparsers)`` that adds its parser(s) and sets ``func`` to a
callable taking the parsed ``argparse.Namespace`` and returning an exit code. Command
modules import only light modules at the top (heavy ones such as torch load inside the
handlers), so ``tokshift --help`` is fast.

Handlers raise instead of printing: `main` is the one place that turns a project error
(`tokshift.errors`) into the line ``tokshift COMMAND: error: MESSAGE`` and its exit code, so
every command reports alike and a scheduler can act on the code. Anything else is a bug and
leaves with its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import TYPE_CHECKING

from tokshift import provenance
from tokshift.argtypes import HelpFormatter, exit_codes_epilog, file_path
from tokshift.errors import ExitCode, TokshiftError
from tokshift.provenance.environment import CODE_ENV, job_code_mismatch

if TYPE_CHECKING:
    from tokshift.attempts import Attempt

# Modules that contribute sub-commands, in pipeline order (the order of --help).
COMMAND_MODULES: tuple[str, ...] = (
    "tokshift.zoo.commands",
    "tokshift.fetch.commands",
    "tokshift.data.commands",
    "tokshift.engine.commands",
    "tokshift.results.commands",
    "tokshift.viz.commands",
    "tokshift.provenance.commands",
    "tokshift.preflight.commands",
)


def version() -> str:
    """The version of the running package (the checkout's, which may differ from what pip installed)."""
    from tokshift import __version__

    return __version__


def _job_header(command: str) -> None:
    """A workflow job's first log lines: which code, which software, where (tokshift.provenance)."""
    from tokshift import provenance
    from tokshift.attempts import is_rank_zero

    if not is_rank_zero():
        return
    for line in provenance.header_lines(provenance.collect(command)):
        print(line, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokshift",
        description="TokShift video transformer: zoo, weights, data, training, evaluation, results, figures.",
        epilog=exit_codes_epilog(ExitCode),
        formatter_class=HelpFormatter,
        allow_abbrev=False,  # --attempts-log is found and left out of the recorded command line by its full name
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument(
        "--attempts-log",
        type=file_path,
        default=None,
        metavar="FILE",
        help="append this run to FILE (start line, log records, end line with the exit code); when the last "
        "run recorded there failed with BAD_INPUT, NOT_RETRYABLE or DATA_DAMAGED and neither the command line "
        "nor its input files changed since, exit at once with that code instead of failing again "
        "(default: no record)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``tokshift`` command line and return its exit code (`tokshift.errors.ExitCode`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    provenance.set_command_line(argv)
    if os.environ.get(CODE_ENV):  # a workflow job: say which code runs, and refuse any other than planned
        _job_header(args.command)
        mismatch = job_code_mismatch(os.environ)
        if mismatch is not None:
            _report(args.command, mismatch)
            return ExitCode.NOT_RETRYABLE
    if args.attempts_log is None:
        return _run(args)
    from tokshift.attempts import Attempt

    attempt = Attempt(args.attempts_log, args.command, _without_attempts_log(argv, args.command))
    refused = attempt.refusal()
    if refused is not None:
        code, message = refused
        _report(args.command, message)
        return code
    with attempt:
        return _run(args, attempt)


def _run(args: argparse.Namespace, attempt: Attempt | None = None) -> int:
    try:
        code = int(args.func(args) or 0)
    except TokshiftError as exc:
        return _fail(args.command, str(exc), exc.exit_code, attempt)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        if exc.filename is None:  # not about a file the user named: a bug
            raise
        return _fail(args.command, _os_message(exc), ExitCode.BAD_INPUT, attempt)
    except KeyboardInterrupt:
        code = 130
    if attempt is not None:
        attempt.finished(code)
    return code


def _fail(command: str, message: str, code: int, attempt: Attempt | None) -> int:
    _report(command, message)
    if attempt is not None:
        attempt.failed(code, message)
    return int(code)


def _report(command: str, message: str) -> None:
    print(f"tokshift {command}: error: {message}", file=sys.stderr, flush=True)


def _os_message(exc: OSError) -> str:
    """A missing, misplaced or forbidden input named in one line (missing inputs are the commonest mistake)."""
    what = {
        FileNotFoundError: "no such file or folder",
        IsADirectoryError: "is a folder, not a file",
        PermissionError: "permission denied",
    }.get(type(exc), exc.strerror or type(exc).__name__)
    other = f" (and {exc.filename2})" if exc.filename2 else ""
    return f"{exc.filename}{other}: {what}; check the path"


def _without_attempts_log(argv: list[str], command: str) -> list[str]:
    """``argv`` without the --attempts-log option (it precedes the command): the command line the log records."""
    out: list[str] = []
    items = iter(argv)
    for item in items:
        if item == command:
            return [*out, item, *items]
        if item == "--attempts-log":
            next(items, None)
        elif not item.startswith("--attempts-log="):
            out.append(item)
    return out


if __name__ == "__main__":
    sys.exit(main())
