"""Per-split summary of data preparation: annotated, packed, missing, failed (with reasons), frames, bytes.

Totals come from each shard's per-video listing (``shard-N.videos.csv``) and the index is
streamed, so summarising 260k videos reads a few MB of CSV instead of every shard's header;
a shard without a listing (packed by an older tokshift) is read through its header.

``class_coverage`` names the classes this split's index has no video of and, when the other
split's index is given, the classes with validation videos but no training video and the reverse
(`tokshift.data.coverage`).
"""

from __future__ import annotations

import collections
import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokshift.data.coverage import ClassCoverage, class_coverage, split_gap_warning
from tokshift.data.pack import listing_path_for, read_failures, read_listing
from tokshift.data.sources import DatasetSpecError, is_index_header, missing_path, read_classes, read_missing
from tokshift.data.store import ShardReader
from tokshift.fileio import atomic_write_json

__all__ = ["coverage_warnings", "failures_path_for", "other_split_index", "summarize_split", "write_summary"]


def failures_path_for(shard: str | os.PathLike[str]) -> Path:
    """``.../shard-3.lmdb`` -> ``.../shard-3.failures.csv`` (the pack command's default)."""
    return Path(shard).with_suffix(".failures.csv")


def summarize_split(
    index: str | os.PathLike[str],
    shards: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    other_index: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Summarise one split from its index CSV and its shard files (a list, or their directory);
    `other_index`, the other split's index, adds the classes only one split has videos of."""
    indexed, index_splits, per_label = _count_index(index)
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
        "class_coverage": _class_coverage(index, index_splits, per_label, other_index),
    }


def _count_index(index: str | os.PathLike[str]) -> tuple[int, set[str], collections.Counter[int]]:
    """Rows, splits and rows per label index of an index CSV, streamed."""
    path = Path(index)
    if not path.is_file():
        raise DatasetSpecError(f"index {path} does not exist; build it with `tokshift index`")
    count, splits, per_label = 0, set(), collections.Counter()
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not is_index_header(reader.fieldnames or ()):
            raise DatasetSpecError(f"{path}: not a tokshift index (columns {reader.fieldnames})")
        for row in reader:
            count += 1
            splits.add(row["split"])
            per_label[int(row["label_index"])] += 1
    return count, splits, per_label


def other_split_index(index: str | os.PathLike[str]) -> Path | None:
    """The workflow's other index beside `index` (``index/train.csv`` for ``index/val.csv``), when it exists."""
    path = Path(index)
    other = {"train": "val", "val": "train"}.get(path.stem)
    if other is None:
        return None
    sibling = path.with_name(f"{other}{path.suffix}")
    return sibling if sibling.is_file() else None


def _class_coverage(
    index: str | os.PathLike[str],
    splits: set[str],
    per_label: collections.Counter[int],
    other_index: str | os.PathLike[str] | None,
) -> dict[str, Any]:
    """This split's classes without a video and, with the other split's index, the one-split classes."""
    classes = read_classes(index)
    counts = [per_label.get(i, 0) for i in range(len(classes))]
    split = next(iter(splits)) if len(splits) == 1 else None
    block: dict[str, Any] = {
        "classes": len(classes),
        "without_videos": [c for c, n in zip(classes, counts) if not n],
        "other_index": None,
        "val_only": None,
        "train_only": None,
    }
    if other_index is None or split not in ("train", "val"):
        return block
    _, other_splits, other_per_label = _count_index(other_index)
    want = "val" if split == "train" else "train"
    if other_splits != {want}:
        raise DatasetSpecError(
            f"{other_index} holds split(s) {sorted(other_splits)}, not {want!r}: give the {want} index of the "
            f"dataset of {index}"
        )
    if read_classes(other_index) != classes:
        raise DatasetSpecError(
            f"{other_index} and {index} list different classes: give both splits' indexes of the same dataset "
            "(`tokshift index` builds them from one description)"
        )
    other = [other_per_label.get(i, 0) for i in range(len(classes))]
    train, val = (counts, other) if split == "train" else (other, counts)
    coverage = class_coverage(classes, train, val)
    block.update(other_index=str(other_index), val_only=list(coverage.val_only), train_only=list(coverage.train_only))
    return block


def coverage_warnings(summary: dict[str, Any], index: str | os.PathLike[str]) -> list[str]:
    """The warning lines of a summary's ``class_coverage`` (none when every class has videos in both splits)."""
    block = summary.get("class_coverage") or {}
    if block.get("val_only") is not None:
        coverage = ClassCoverage(block["classes"], tuple(block["val_only"]), tuple(block["train_only"]))
        return coverage.warnings()
    line = split_gap_warning(summary["split"], block.get("without_videos") or [], block.get("classes", 0), str(index))
    return [line] if line else []


def write_summary(summary: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """Write the summary as indented JSON (atomically)."""
    out = Path(out)
    atomic_write_json(out, summary)
    return out
