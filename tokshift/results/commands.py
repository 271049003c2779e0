"""CLI sub-command ``tokshift collect``: the model-zoo table from exactly the files it is given."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tokshift.argtypes import add_command, file_path, optional_file


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``collect`` parser."""
    c = add_command(
        subparsers,
        "collect",
        help="collect evaluation and training outputs into the model-zoo table and plot",
        description="Read the given metrics.json and train_summary.json files (matched by the model name "
        "inside them; rows in the order of --metrics), check the checkpoints against the sha256 the "
        "summaries record, and write the CSV, markdown, plot, <csv stem>.sources.json and model-index.yml "
        "(the table as a model-index metafile) beside the CSV. With --released "
        "instead of --train-summaries, the rows are released checkpoints converted by import-original.",
    )
    c.add_argument("--dataset", required=True, help="dataset name, shown in the table title")
    c.add_argument(
        "--metrics", nargs="+", required=True, type=file_path, metavar="JSON", help="metrics.json of each model"
    )
    origin = c.add_mutually_exclusive_group(required=True)
    origin.add_argument(
        "--train-summaries",
        nargs="+",
        type=file_path,
        metavar="JSON",
        help="train_summary.json of each trained model (default: none; give this or --released)",
    )
    origin.add_argument(
        "--released",
        nargs="+",
        type=file_path,
        metavar="PT",
        help="instead of trained models: the model.pt `tokshift import-original` wrote for each released "
        "checkpoint (default: none; give this or --train-summaries)",
    )
    c.add_argument(
        "--released-source",
        nargs="*",
        default=[],
        type=_model_source,
        metavar="MODEL=SOURCE",
        help="with --released: the URL or path each checkpoint was fetched from, for the checkpoint_source "
        "column (default: the source file its model.pt records)",
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
    c.add_argument(
        "--preflight",
        type=optional_file,
        default=None,
        metavar="JSON",
        help="results/NAME/preflight.json: each trained model's projected hours and GPU-hours beside the measured "
        "ones ('' or default: none)",
    )
    c.add_argument("--csv", required=True, type=file_path, help="table to write, e.g. results/NAME/model_zoo.csv")
    c.add_argument("--md", required=True, type=file_path, help="markdown table to write")
    c.add_argument("--plot", required=True, type=file_path, help="accuracy vs. GFLOPs PNG to write")
    c.set_defaults(func=run_collect)


def _model_source(text: str) -> tuple[str, str]:
    model, sep, source = text.partition("=")
    if not sep or not model or not source:
        raise argparse.ArgumentTypeError(f"{text!r} is not MODEL=SOURCE (e.g. k400_vit_8x32_224=https://...)")
    return model, source


def _refuse_outputs_over_inputs(args: argparse.Namespace) -> None:
    """The table, its markdown, plot and the two files beside the CSV never replace an input or each other."""
    from tokshift.fileio import refuse_output_over_input, refuse_shared_outputs
    from tokshift.results.render import model_index_path, sources_path

    csv = Path(args.csv)
    outputs = {
        "--csv": csv,
        "--md": args.md,
        "--plot": args.plot,
        "the sources file beside --csv": sources_path(csv),
        "the model index beside --csv": model_index_path(csv),
    }
    refuse_shared_outputs(outputs)
    inputs = [*args.metrics, *(args.train_summaries or []), *(args.released or []), *args.checkpoints]
    for option, path in outputs.items():
        refuse_output_over_input(path, [*inputs, args.val_summary, args.preflight], name=option)


def run_collect(args: argparse.Namespace) -> int:
    """``tokshift collect``: print the written paths; a bad input file fails naming it."""
    from tokshift.results import ResultsError, collect, collect_released, write_outputs

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _refuse_outputs_over_inputs(args)
    if args.released:
        if args.checkpoints:
            raise ResultsError("--checkpoints goes with --train-summaries; --released names the checkpoints")
        sources = dict(args.released_source)
        df = collect_released(args.dataset, args.metrics, args.released, args.val_summary, sources)
    elif args.released_source:
        raise ResultsError("--released-source goes with --released")
    else:
        df = collect(
            args.dataset, args.metrics, args.train_summaries, args.checkpoints, args.val_summary, args.preflight
        )
    written = write_outputs(df, Path(args.csv), Path(args.md), Path(args.plot))
    for path in written:
        print(path)
    return 0
