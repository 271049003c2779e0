"""CLI sub-commands of the data package: ``demo``, ``index``, ``pack``, ``summarize``.

Options that mirror a config setting (``frames.*``) take their default from the config schema,
so a direct call packs exactly like a workflow run.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from tokshift.argtypes import (
    add_command,
    add_progress,
    file_path,
    int_in,
    nonnegative_int,
    options_from_args,
    positive_float,
    positive_int,
    progress_bar,
)
from tokshift.errors import BadInput, ExitCode
from tokshift.settings import default

__all__ = ["register", "run_demo", "run_index", "run_pack", "run_summarize"]

log = logging.getLogger("tokshift.data")


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _load_config(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise BadInput(f"config file {p} does not exist")
    try:
        with open(p, encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        problem = " ".join(str(err).split())  # the parser's message spans lines
        raise BadInput(f"{p} is not a YAML file ({problem}); give the workflow's config.yaml") from None
    if not isinstance(cfg, dict):
        raise BadInput(f"{p} must hold a YAML mapping")
    return cfg


def run_demo(args: argparse.Namespace) -> int:
    """``tokshift demo``: generate the demo dataset."""
    from tokshift.data.demo import DemoConfig, generate_demo

    _setup_logging()
    cfg = options_from_args(DemoConfig, args)
    csvs = generate_demo(args.out, cfg, workers=args.workers, progress=progress_bar(args.progress))
    for split, path in csvs.items():
        print(f"{split}: {path}")
    return 0


def _refuse_index_over_inputs(out: str, inputs: list[Any]) -> None:
    """The index CSV and the two files written beside it never replace the config or an annotation file."""
    from tokshift.data.sources import classes_path, missing_path
    from tokshift.fileio import refuse_output_over_input

    for path in (out, missing_path(out), classes_path(out)):
        refuse_output_over_input(path, inputs, name="--out" if path == out else "the file written beside --out")


def run_index(args: argparse.Namespace) -> int:
    """``tokshift index``: index one split of a dataset."""
    from tokshift.data.sources import annotation_files, build_index, write_index

    _setup_logging()
    shards = args.shards
    if args.spec_json:
        try:
            spec = json.loads(args.spec_json)
        except json.JSONDecodeError as err:
            raise BadInput(f"--spec-json is not JSON ({err}); give the dataset description as an object") from None
        if not isinstance(spec, dict):
            raise BadInput(f"--spec-json must be a JSON object (the dataset description), got {args.spec_json!r}")
    elif args.config:
        cfg = _load_config(args.config)
        name = args.dataset or cfg.get("dataset")
        datasets = cfg.get("datasets") or {}
        if name not in datasets:
            raise BadInput(f"dataset {name!r} is not in {args.config} (datasets: {sorted(datasets)})")
        spec = datasets[name]
        if shards is None:
            shards = int((cfg.get("frames") or {}).get("shards", default("frames", "shards")))
    else:
        raise BadInput("give --config (with --dataset) or --spec-json")
    _refuse_index_over_inputs(args.out, [args.config, *annotation_files(spec)])
    result = build_index(spec, args.split, int(shards or default("frames", "shards")))
    out, miss, cls = write_index(result, args.out)
    log.info(
        "indexed %s split %s: %d videos, %d missing, %d classes -> %s",
        spec.get("kind"),
        result.split,
        len(result.rows),
        len(result.missing),
        len(result.classes),
        out,
    )
    if result.missing:
        log.warning("%d annotated videos are missing on disk; listed in %s", len(result.missing), miss)
    from tokshift.data.coverage import classes_without_videos, split_gap_warning

    without = classes_without_videos(result.classes, (r.label_index for r in result.rows))
    gap = split_gap_warning(result.split, without, len(result.classes), str(out))
    if gap:
        log.warning("%s", gap)
    return 0


def run_pack(args: argparse.Namespace) -> int:
    """``tokshift pack``: pack one shard of an index into an LMDB file."""
    from tokshift.data.pack import pack_shard

    _setup_logging()
    result = pack_shard(
        args.index,
        args.shard,
        args.out,
        args.failures,
        listing=args.videos,
        short_side=args.short_side or None,
        jpeg_quality=args.jpeg_quality,
        workers=args.workers,
        timeout=args.timeout,
        progress=progress_bar(args.progress),
    )
    print(
        f"{result.path}: {result.packed}/{result.videos} videos, {result.frames} frames, "
        f"{len(result.failures)} failed ({result.failures_path}), {result.seconds:.1f} s"
    )
    return 0


def _refuse_summary_over_inputs(out: str, index: Path, shards: Any, other: Path | None) -> None:
    """The summary never replaces a file it is made from: the indexes, a shard or a shard's CSVs."""
    from tokshift.data.pack import listing_path_for
    from tokshift.data.sources import classes_path, missing_path
    from tokshift.data.summary import failures_path_for
    from tokshift.fileio import refuse_output_over_input

    files = sorted(Path(shards).glob("*.lmdb")) if isinstance(shards, str) else [Path(s) for s in shards]
    inputs = [index, missing_path(index), classes_path(index), other, *([shards] if isinstance(shards, str) else [])]
    inputs += [p for shard in files for p in (shard, failures_path_for(shard), listing_path_for(shard))]
    refuse_output_over_input(out, inputs, name="--out")


def run_summarize(args: argparse.Namespace) -> int:
    """``tokshift summarize``: per-split summary JSON."""
    from tokshift.data.summary import coverage_warnings, other_split_index, summarize_split, write_summary

    _setup_logging()
    shards: Any = args.shards if args.shards else args.shards_dir
    if not shards:
        raise BadInput("give --shards-dir or --shards")
    other = args.other_index if args.other_index is not None else other_split_index(args.index)
    if args.out:
        _refuse_summary_over_inputs(args.out, args.index, shards, other)
    summary = summarize_split(args.index, shards, other)
    if args.out:
        write_summary(summary, args.out)
    brief = {k: v for k, v in summary.items() if k not in ("failed_videos", "missing_videos")}
    print(json.dumps(brief, indent=2, ensure_ascii=False))
    if other is None:
        log.info(
            "no index of the other split given or found beside %s: classes of one split only not checked", args.index
        )
    for line in coverage_warnings(summary, args.index):
        log.warning("%s", line)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the data sub-commands to the ``tokshift`` CLI."""
    p = add_command(subparsers, "demo", help="generate the demo video dataset (H.264 clips + train/val CSVs)")
    p.add_argument("--out", required=True, help="output folder, e.g. resources/demo")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="random seed of the rendered clips")
    p.add_argument("--train-per-class", type=positive_int, default=128, help="training clips per class")
    p.add_argument("--val-per-class", type=positive_int, default=32, help="validation clips per class")
    p.add_argument("--frames", type=positive_int, default=24, help="frames per clip")
    p.add_argument("--size", type=positive_int, default=64, help="frame width and height in pixels")
    p.add_argument("--fps", type=positive_int, default=8, help="frame rate written into the clips")
    p.add_argument("--workers", type=positive_int, default=None, help="parallel ffmpeg encoders (default: all cores)")
    add_progress(p)
    p.set_defaults(func=run_demo)

    p = add_command(subparsers, "index", help="index one split of a dataset (video id, path, label, shard)")
    p.add_argument(
        "--config",
        type=file_path,
        help="config.yaml holding datasets.NAME and frames.shards (default: use --spec-json)",
    )
    p.add_argument("--dataset", help="dataset name in the config (default: its `dataset` key)")
    p.add_argument("--spec-json", help="the dataset description as JSON instead of --config/--dataset (default: none)")
    p.add_argument("--split", required=True, choices=["train", "val"], help="which split to index")
    p.add_argument(
        "--shards",
        type=positive_int,
        default=None,
        help=f"number of shards (default: the config's frames.shards, else {default('frames', 'shards')})",
    )
    p.add_argument("--out", required=True, help="index CSV to write, e.g. results/NAME/index/train.csv")
    p.set_defaults(func=run_index)

    p = add_command(
        subparsers,
        "pack",
        help="extract the frames of one shard with ffmpeg into an LMDB file",
        exit_codes=(ExitCode.RETRY_LATER,),
    )
    p.add_argument("--index", required=True, type=file_path, help="index CSV from `tokshift index`")
    p.add_argument("--shard", type=nonnegative_int, required=True, help="shard number to pack (0-based)")
    p.add_argument("--out", required=True, help="shard file to write, e.g. results/NAME/frames/train/shard-0.lmdb")
    p.add_argument("--failures", default=None, help="failures CSV (default: next to --out, .failures.csv)")
    p.add_argument(
        "--videos",
        default=None,
        help="per-video listing CSV of the packed videos (default: next to --out, .videos.csv)",
    )
    p.add_argument(
        "--short-side",
        type=nonnegative_int,
        default=default("frames", "short_side"),
        help="resize the short side to this many pixels (0: keep the size)",
    )
    p.add_argument(
        "--jpeg-quality", type=int_in(1, 100), default=default("frames", "jpeg_quality"), help="JPEG quality, 1-100"
    )
    p.add_argument("--workers", type=positive_int, default=None, help="ffmpeg processes in flight (default: cores)")
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=float(default("frames", "timeout")),
        help="kill ffmpeg after this many seconds without a frame",
    )
    add_progress(p)
    p.set_defaults(func=run_pack)

    p = add_command(
        subparsers,
        "summarize",
        help="summarise a packed split (packed, missing, failed, frames, bytes)",
        exit_codes=(ExitCode.DATA_DAMAGED,),
    )
    p.add_argument("--index", required=True, type=file_path, help="index CSV of the split")
    p.add_argument("--shards-dir", help="folder holding the split's shard-*.lmdb files (default: use --shards)")
    p.add_argument("--shards", nargs="*", help="shard files, instead of --shards-dir (default: none)")
    p.add_argument("--out", help="summary JSON to write (default: print only)")
    p.add_argument(
        "--other-index",
        type=file_path,
        default=None,
        help="the other split's index CSV, to name the classes with videos in one split only "
        "(default: index/train.csv beside index/val.csv and the reverse, when it exists)",
    )
    p.set_defaults(func=run_summarize)
