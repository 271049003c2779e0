"""CLI sub-command ``tokshift download``: fetch a file (weights, part lists), resumable and sha256-verified."""

from __future__ import annotations

import argparse
import logging
import sys

from tokshift.argtypes import add_command, file_path, nonnegative_int, positive_float


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``download`` parser."""
    p = add_command(
        subparsers,
        "download",
        help="resumable, sha256-verified download of a weights file",
        description="Download URL (http(s)://, file:// or a local path) to OUT, resuming OUT.part, "
        "verifying --sha256 when given and always recording it in OUT.sha256.",
    )
    p.add_argument("--url", required=True, help="http(s):// or file:// URL, or a local path")
    p.add_argument("--out", required=True, type=file_path, help="destination file")
    p.add_argument("--sha256", default=None, help="expected hex sha256 (default: record it on first download)")
    p.add_argument("--retries", type=nonnegative_int, default=5, help="retries on dropped connections and 5xx")
    p.add_argument("--backoff", type=positive_float, default=1.0, help="first retry delay in seconds (doubles)")
    p.add_argument("--timeout", type=positive_float, default=60.0, help="socket timeout in seconds")
    p.add_argument("--url-key", default="weights.<backbone>.url", help="config key named when the URL is unreachable")
    p.add_argument("--config-key", default=None, help="config key named in checksum errors (default: none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_download)


def run_download(args: argparse.Namespace) -> int:
    """``tokshift download``: print ``<sha256>  <file>`` on success, exit 1 on a failed download."""
    from tokshift.weights import DownloadError, download

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        digest = download(
            args.url,
            args.out,
            sha256=args.sha256,
            retries=args.retries,
            timeout=args.timeout,
            progress=not args.no_progress,
            config_key=args.config_key,
            backoff=args.backoff,
            url_key=args.url_key,
        )
    except DownloadError as err:
        print(f"tokshift download: error: {err}", file=sys.stderr)
        return 1
    print(f"{digest}  {args.out}")
    return 0
