"""CLI sub-commands ``fetch-part`` and ``fetch-replacement``: the per-job steps of the CVDF fetch rules."""

from __future__ import annotations

import argparse
import logging
import sys

from tokshift.argtypes import add_command, file_path, nonnegative_int, positive_float


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _download_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--retries", type=nonnegative_int, default=5, help="retries on dropped connections and 5xx")
    p.add_argument("--backoff", type=positive_float, default=1.0, help="first retry delay in seconds (doubles)")
    p.add_argument("--timeout", type=positive_float, default=60.0, help="socket timeout in seconds")
    p.add_argument("--url-key", default="cvdf", help="config key named when a URL is unreachable")


def run_fetch_part(args: argparse.Namespace) -> int:
    """``tokshift fetch-part``: download one part archive, extract it, record it."""
    from tokshift.fetch.cvdf import FetchError, fetch_part

    _setup_logging()
    try:
        record = fetch_part(
            args.list,
            args.part,
            args.archives,
            args.dest,
            args.marker,
            delete_archive=args.delete_archive,
            retries=args.retries,
            backoff=args.backoff,
            timeout=args.timeout,
            url_key=args.url_key,
        )
    except FetchError as err:
        print(f"tokshift fetch-part: error: {err}", file=sys.stderr)
        return 1
    print(f"{record['part']}: {record['videos']} videos into {record['dest']}")
    return 0


def run_fetch_replacement(args: argparse.Namespace) -> int:
    """``tokshift fetch-replacement``: download the replacement archive and put its clips in place."""
    from pathlib import Path

    from tokshift.download import DownloadError, download
    from tokshift.fetch.cvdf import FetchError, apply_replacement

    _setup_logging()
    archive = Path(args.archive)
    try:
        download(
            args.url,
            archive,
            retries=args.retries,
            backoff=args.backoff,
            timeout=args.timeout,
            progress=False,
            url_key=args.url_key,
        )
        record = apply_replacement(archive, args.root, args.marker)
    except (DownloadError, FetchError) as err:
        print(f"tokshift fetch-replacement: error: {err}", file=sys.stderr)
        return 1
    if args.delete_archive:
        archive.unlink(missing_ok=True)
    print(f"{record['replaced']} clips replaced, {record['added']} added under {args.root}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the fetch sub-commands to the ``tokshift`` CLI."""
    p = add_command(subparsers, "fetch-part", help="download one Kinetics part archive, extract it safely")
    p.add_argument("--list", required=True, type=file_path, help="the split's part list (one URL a line)")
    p.add_argument("--part", required=True, help="part name: the URL's file name without .tar.gz")
    p.add_argument("--archives", required=True, help="folder for the downloaded archives")
    p.add_argument("--dest", required=True, help="folder to extract the videos into")
    p.add_argument("--marker", required=True, help="JSON record of the extracted part, written last")
    p.add_argument("--delete-archive", action="store_true", help="delete the archive once extracted")
    _download_options(p)
    p.set_defaults(func=run_fetch_part)

    p = add_command(subparsers, "fetch-replacement", help="apply the Kinetics replacement archive over the parts")
    p.add_argument("--url", required=True, help="URL of the replacement archive")
    p.add_argument("--archive", required=True, help="where the archive is downloaded")
    p.add_argument("--root", required=True, help="the dataset root holding the extracted clips")
    p.add_argument("--marker", required=True, help="JSON record of what was replaced, written last")
    p.add_argument("--delete-archive", action="store_true", help="delete the archive once applied")
    _download_options(p)
    p.set_defaults(func=run_fetch_replacement)
