"""CLI sub-command ``tokshift collect``: the model-zoo table from exactly the files it is given."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tokshift.argtypes import add_command, file_path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``collect`` parser."""
    c = add_command(
        subparsers,
        "collect",
        help="collect evaluation and training outputs into the model-zoo table and plot",
        description="Read the given metrics.json and train_summary.json files (matched by the model name "
        "inside them; rows in the order of --metrics), check the checkpoints against the sha256 the "
        "summaries record, and write the CSV, markdown, plot and <csv stem>.sources.json.",
    )
    c.add_argument("--dataset", required=True, help="dataset name, shown in the table title")
    c.add_argument(
        "--metrics", nargs="+", required=True, type=file_path, metavar="JSON", help="metrics.json of each model"
    )
    c.add_argument(
        "--train-summaries",
        nargs="+",
        required=True,
        type=file_path,
        metavar="JSON",
        help="train_summary.json of each model",
    )
    c.add_argument(
        "--checkpoints",
        nargs="*",
        default=[],
        type=file_path,
        metavar="PT",
        help="model.pt of each model, verified by sha256 (default: not checked)",
    )
    c.add_argument(
        "--val-summary",
        type=file_path,
        default=None,
        metavar="JSON",
        help="frames/val/summary.json, adds missing and unpackable videos to the failed count (default: none)",
    )
    c.add_argument("--csv", required=True, type=file_path, help="table to write, e.g. results/NAME/model_zoo.csv")
    c.add_argument("--md", required=True, type=file_path, help="markdown table to write")
    c.add_argument("--plot", required=True, type=file_path, help="accuracy vs. GFLOPs PNG to write")
    c.set_defaults(func=run_collect)


def run_collect(args: argparse.Namespace) -> int:
    """``tokshift collect``: print the written paths; exit 1 naming the bad input file."""
    from tokshift.results import ResultsError, collect, write_outputs

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        df = collect(args.dataset, args.metrics, args.train_summaries, args.checkpoints, args.val_summary)
        written = write_outputs(df, Path(args.csv), Path(args.md), Path(args.plot))
    except ResultsError as err:
        print(f"tokshift collect: error: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0
