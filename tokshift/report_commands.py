"""CLI sub-commands ``tokshift download`` and ``tokshift collect``.

Heavy imports (pandas, matplotlib, the zoo) happen inside the handlers so that
``tokshift --help`` and ``tokshift download`` stay fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``download`` and ``collect`` parsers."""
    p = subparsers.add_parser(
        "download",
        help="resumable, sha256-verified download of a weights file",
        description="Download URL (http(s)://, file:// or a local path) to OUT, resuming OUT.part, "
        "verifying --sha256 when given and always recording it in OUT.sha256.",
    )
    p.add_argument("--url", required=True, help="http(s):// or file:// URL, or a local path")
    p.add_argument("--out", required=True, type=Path, help="destination file")
    p.add_argument("--sha256", default=None, help="expected hex sha256 (omit to record it on first download)")
    p.add_argument("--retries", type=int, default=5, help="retries on dropped connections and 5xx (default 5)")
    p.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds (default 60)")
    p.add_argument("--config-key", default=None, help="config key named in checksum errors")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_download)

    c = subparsers.add_parser(
        "collect",
        help="collect evaluation and training outputs into the model-zoo table and plot",
        description="Read results/<dataset>/eval/<model>/metrics.json and train/<model>/train_summary.json "
        "and write model_zoo.csv, model_zoo.md, model_zoo.sources.json and accuracy_vs_gflops.png.",
    )
    c.add_argument("--dataset", required=True, help="dataset name (folder under the results dir)")
    c.add_argument("--models", nargs="+", required=True, help="zoo names to include")
    c.add_argument("--results-dir", type=Path, default=Path("results"), help="default: results")
    c.add_argument("--csv", type=Path, default=None, help="default: <results-dir>/<dataset>/model_zoo.csv")
    c.add_argument("--md", type=Path, default=None, help="default: <results-dir>/<dataset>/model_zoo.md")
    c.add_argument("--plot", type=Path, default=None, help="default: <results-dir>/<dataset>/accuracy_vs_gflops.png")
    c.set_defaults(func=_run_collect)


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _run_download(args: argparse.Namespace) -> int:
    from tokshift.weights import DownloadError, download

    _setup_logging()
    try:
        digest = download(
            args.url,
            args.out,
            sha256=args.sha256,
            retries=args.retries,
            timeout=args.timeout,
            progress=not args.no_progress,
            config_key=args.config_key,
        )
    except DownloadError as err:
        print(f"tokshift download: error: {err}", file=sys.stderr)
        return 1
    print(f"{digest}  {args.out}")
    return 0


def _run_collect(args: argparse.Namespace) -> int:
    from tokshift.results import ResultsError, collect, write_outputs

    _setup_logging()
    base = args.results_dir / args.dataset
    try:
        df = collect(args.dataset, list(args.models), results_dir=args.results_dir)
        written = write_outputs(
            df,
            args.csv or base / "model_zoo.csv",
            args.md or base / "model_zoo.md",
            args.plot or base / "accuracy_vs_gflops.png",
        )
    except ResultsError as err:
        print(f"tokshift collect: error: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0
