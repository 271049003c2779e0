"""Per-split summary of data preparation: annotated, packed, missing, failed (with reasons), frames, bytes.

Totals come from each shard's per-video listing (``shard-N.videos.csv``) and the index is
streamed, so summarising 260k videos reads a few MB of CSV instead of every shard's header;
a shard without a listing (packed by an older tokshift) is read through its header.
"""

from __future__ import annotations

import collections
import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokshift.data.pack import listing_path_for, read_failures, read_listing
from tokshift.data.sources import DatasetSpecError, is_index_header, missing_path, read_missing
from tokshift.data.store import ShardReader
from tokshift.fileio import atomic_write_json

__all__ = ["failures_path_for", "summarize_split", "write_summary"]


def failures_path_for(shard: str | os.PathLike[str]) -> Path:
    """``.../shard-3.lmdb`` -> ``.../shard-3.failures.csv`` (the pack command's default)."""
    return Path(shard).with_suffix(".failures.csv")


def summarize_split(
    index: str | os.PathLike[str],
    shards: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
) -> dict[str, Any]:
    """Summarise one split from its index CSV and its shard files (a list, or their directory)."""
    indexed, index_splits = _count_index(index)
    missing = read_missing(missing_path(index))
    if isinstance(shards, (str, os.PathLike)):
        shard_files = sorted(Path(shards).glob("*.lmdb"))
    else:
        shard_files = [Path(s) for s in shards]
    packed = frames = payload = file_bytes = 0
    failures: list[dict[str, str]] = []
    absent: list[str] = []
    for shard in shard_files:
        failures.extend(read_failures(failures_path_for(shard)))
        if not shard.is_file():
            absent.append(str(shard))
            continue
        listing = listing_path_for(shard)
        if listing.is_file():
            for v in read_listing(listing):
                packed += 1
                frames += int(v["frames"])
                payload += int(v["bytes"])
        else:
            reader = ShardReader(shard)
            for record in reader.videos():
                packed += 1
                frames += int(record["nframes"])
                payload += int(record.get("bytes", 0))
            reader.close()
        file_bytes += shard.stat().st_size
    reasons = collections.Counter(f["reason"] for f in failures)
    splits = sorted(index_splits | {m.split for m in missing})
    return {
        "split": splits[0] if len(splits) == 1 else ",".join(splits),
        "videos_in_annotation": indexed + len(missing),
        "indexed": indexed,
        "missing": len(missing),
        "packed": packed,
        "failed": len(failures),
        "not_packed_yet": max(indexed - packed - len(failures), 0),
        "failure_reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "total_frames": frames,
        "frame_bytes": payload,
        "shard_file_bytes": file_bytes,
        "shards": len(shard_files),
        "shards_absent": absent,
        "failed_videos": [{"video_id": f["video_id"], "reason": f["reason"]} for f in failures],
        "missing_videos": [m.video_id for m in missing],
    }


def _count_index(index: str | os.PathLike[str]) -> tuple[int, set[str]]:
    """Rows and splits of an index CSV, streamed."""
    path = Path(index)
    if not path.is_file():
        raise DatasetSpecError(f"index {path} does not exist; build it with `tokshift index`")
    count, splits = 0, set()
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not is_index_header(reader.fieldnames or ()):
            raise DatasetSpecError(f"{path}: not a tokshift index (columns {reader.fieldnames})")
        for row in reader:
            count += 1
            splits.add(row["split"])
    return count, splits


def write_summary(summary: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """Write the summary as indented JSON (atomically)."""
    out = Path(out)
    atomic_write_json(out, summary)
    return out
