"""Per-split summary of data preparation: annotated, packed, missing, failed (with reasons), frames, bytes."""

from __future__ import annotations

import collections
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokshift.data.pack import read_failures
from tokshift.data.sources import missing_path, read_index, read_missing
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
    rows = read_index(index)
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
        reader = ShardReader(shard)
        for v in reader.videos():
            packed += 1
            frames += int(v["nframes"])
            payload += int(v.get("bytes", 0))
        reader.close()
        file_bytes += shard.stat().st_size
    reasons = collections.Counter(f["reason"] for f in failures)
    splits = sorted({r.split for r in rows} | {m.split for m in missing})
    return {
        "split": splits[0] if len(splits) == 1 else ",".join(splits),
        "videos_in_annotation": len(rows) + len(missing),
        "indexed": len(rows),
        "missing": len(missing),
        "packed": packed,
        "failed": len(failures),
        "not_packed_yet": max(len(rows) - packed - len(failures), 0),
        "failure_reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "total_frames": frames,
        "frame_bytes": payload,
        "shard_file_bytes": file_bytes,
        "shards": len(shard_files),
        "shards_absent": absent,
        "failed_videos": [{"video_id": f["video_id"], "reason": f["reason"]} for f in failures],
        "missing_videos": [m.video_id for m in missing],
    }


def write_summary(summary: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """Write the summary as indented JSON (atomically)."""
    out = Path(out)
    atomic_write_json(out, summary)
    return out
