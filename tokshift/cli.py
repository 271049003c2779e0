"""The `tokshift` command.

Each stage owns its sub-commands in its package's ``commands`` module; a module joins the
CLI by exposing ``register(subparsers)`` that adds its parser(s) and sets ``func`` to a
callable taking the parsed ``argparse.Namespace`` and returning an exit code. Command
modules import only light modules at the top (heavy ones such as torch load inside the
handlers), so ``tokshift --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute sub-commands, in pipeline order (the order of --help).
COMMAND_MODULES: tuple[str, ...] = (
    "tokshift.zoo.commands",
    "tokshift.fetch.commands",
    "tokshift.data.commands",
    "tokshift.engine.commands",
    "tokshift.results.commands",
    "tokshift.viz.commands",
)


def version() -> str:
    """The installed package's version; the source tree's when it is not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("tokshift")
    except PackageNotFoundError:
        from tokshift import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokshift",
        description="TokShift video transformer: zoo, weights, data, training, evaluation, results, figures.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
