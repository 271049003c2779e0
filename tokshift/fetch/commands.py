"""CLI sub-commands ``download`` (ImageNet-21k weights, released checkpoints, dataset files) and
``fetch-part``/``fetch-replacement`` (the per-job steps of the CVDF fetch rules).

The fetch commands' download options default to the config's ``cvdf`` settings, so a direct call
retries like a workflow run.
"""

from __future__ import annotations

import argparse
import logging

from tokshift.argtypes import (
    add_boolean,
    add_command,
    add_progress,
    file_path,
    nonnegative_int,
    optional_text,
    positive_float,
    progress_bar,
)
from tokshift.errors import ExitCode
from tokshift.settings import definition_default

# What a download can end with besides bad input: damaged bytes (a checksum or an archive) or a
# connection that stayed down through every retry.
_DOWNLOAD_CODES = (ExitCode.DATA_DAMAGED, ExitCode.RETRY_LATER)


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _download_options(p: argparse.ArgumentParser, retries: int | None = None, backoff: float | None = None) -> None:
    """Retries, backoff and timeout: the downloader's own defaults unless a config setting mirrors them."""
    from tokshift import download as d

    retries = d.RETRIES if retries is None else retries
    backoff = d.BACKOFF_SECONDS if backoff is None else backoff
    p.add_argument("--retries", type=nonnegative_int, default=retries, help="retries on dropped connections and 5xx")
    p.add_argument("--backoff", type=positive_float, default=backoff, help="first retry delay in seconds (doubles)")
    p.add_argument("--timeout", type=positive_float, default=d.TIMEOUT_SECONDS, help="socket timeout in seconds")


def _fetch_options(p: argparse.ArgumentParser, delete_help: str) -> None:
    add_boolean(
        p,
        "--delete-archive",
        definition_default("cvdf", "delete_archives"),
        f"{delete_help} (bare --delete-archive: true)",
    )
    _download_options(p, retries=definition_default("cvdf", "retries"), backoff=definition_default("cvdf", "backoff"))
    p.add_argument(
        "--url-key",
        default=None,
        help="config key that holds the URL (or the part list naming it), named when it is unreachable "
        "(default: none named)",
    )
    add_progress(p)


def run_download(args: argparse.Namespace) -> int:
    """``tokshift download``: print ``<sha256>  <file>`` on success."""
    from tokshift.download import download

    _setup_logging()
    digest = download(
        args.url,
        args.out,
        sha256=args.sha256,
        retries=args.retries,
        timeout=args.timeout,
        progress=progress_bar(args.progress),
        config_key=args.config_key,
        backoff=args.backoff,
        url_key=args.url_key,
    )
    print(f"{digest}  {args.out}")
    return 0


def run_fetch_part(args: argparse.Namespace) -> int:
    """``tokshift fetch-part``: download one part archive, extract it, record it."""
    from tokshift.fetch.cvdf import fetch_part

    _setup_logging()
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
        progress=progress_bar(args.progress),
    )
    print(f"{record['part']}: {record['videos']} videos into {record['dest']}")
    return 0


def run_fetch_replacement(args: argparse.Namespace) -> int:
    """``tokshift fetch-replacement``: download the replacement archive and put its clips in place."""
    from pathlib import Path

    from tokshift.download import download
    from tokshift.fetch.cvdf import apply_replacement
    from tokshift.fileio import refuse_shared_outputs

    _setup_logging()
    archive = Path(args.archive)
    refuse_shared_outputs({"--archive": archive, "--marker": args.marker})
    download(
        args.url,
        archive,
        retries=args.retries,
        backoff=args.backoff,
        timeout=args.timeout,
        progress=progress_bar(args.progress),
        url_key=args.url_key,
    )
    record = apply_replacement(archive, args.root, args.marker)
    if args.delete_archive:
        archive.unlink(missing_ok=True)
    print(f"{record['replaced']} clips replaced, {record['added']} added under {args.root}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``download`` and fetch sub-commands to the ``tokshift`` CLI."""
    p = add_command(
        subparsers,
        "download",
        help="resumable, sha256-verified download of ImageNet-21k weights, released checkpoints and dataset files",
        description="Download URL (http(s)://, file:// or a local path) to OUT, resuming OUT.part, "
        "verifying --sha256 when given and always recording it in OUT.sha256. The workflow fetches "
        "ImageNet-21k ViT weights, released checkpoints and the CVDF part lists and annotations with it.",
        exit_codes=_DOWNLOAD_CODES,
    )
    p.add_argument("--url", required=True, help="http(s):// or file:// URL, or a local path")
    p.add_argument("--out", required=True, type=file_path, help="destination file")
    p.add_argument(
        "--sha256",
        type=optional_text,
        default=None,
        help="expected hex sha256; '' for none (default: record it on first download)",
    )
    _download_options(p)
    p.add_argument(
        "--url-key",
        default=None,
        help="config key that holds --url (weights.<backbone>.url, released.<model>.source, "
        "datasets.<name>.cvdf.<...>), named when the file is unreachable (default: none named)",
    )
    p.add_argument(
        "--config-key",
        default=None,
        help="config key that holds --sha256 (weights.<backbone>.sha256, released.<model>.sha256), named in "
        "checksum messages (default: none; the hash is recorded in OUT.sha256 only)",
    )
    add_progress(p)
    p.set_defaults(func=run_download)

    p = add_command(
        subparsers,
        "fetch-part",
        help="download one Kinetics part archive, extract it safely",
        exit_codes=_DOWNLOAD_CODES,
    )
    p.add_argument("--list", required=True, type=file_path, help="the split's part list (one URL a line)")
    p.add_argument("--part", required=True, help="part name: the URL's file name without .tar.gz")
    p.add_argument("--archives", required=True, help="folder for the downloaded archives")
    p.add_argument("--dest", required=True, help="folder to extract the videos into")
    p.add_argument("--marker", required=True, help="JSON record of the extracted part, written last")
    _fetch_options(p, "delete the archive once extracted")
    p.set_defaults(func=run_fetch_part)

    p = add_command(
        subparsers,
        "fetch-replacement",
        help="apply the Kinetics replacement archive over the parts",
        exit_codes=_DOWNLOAD_CODES,
    )
    p.add_argument("--url", required=True, help="URL of the replacement archive")
    p.add_argument("--archive", required=True, help="where the archive is downloaded")
    p.add_argument("--root", required=True, help="the dataset root holding the extracted clips")
    p.add_argument("--marker", required=True, help="JSON record of what was replaced, written last")
    _fetch_options(p, "delete the archive once applied")
    p.set_defaults(func=run_fetch_replacement)
