"""The finished videos of an evaluation, kept on disk so that a rerun scores only the rest.

A 30-view pass of a large model over a validation set takes many GPU-hours and may be stopped by
its time limit, preemption or a node failure. While it runs, every process writes the records of
the videos it has finished (`VideoRecord`, exactly what metrics.json and predictions.csv are made
from) into `<out-dir>/partial/`, a chunk file at a time, each written atomically. The records
are only reused by a run whose results they would be: `identity.json` holds everything they
depend on (checkpoint content, shard seals, views, resize, precision, device), and a run with
another identity sets them aside into `partial/stale-<UTC time>/` instead. A chunk that cannot
be read whole (a truncated copy, a full disk) is skipped with a warning and its videos are
scored again. Records are keyed by video index, so any number of processes can reuse them.

Standard library only: torch-dependent parts of the identity are filled in by the caller.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokshift.fileio import atomic_write_bytes, atomic_write_json, new_stale_folder

log = logging.getLogger(__name__)

__all__ = [
    "CHUNK_DELAY_VAR",
    "FORMAT",
    "IDENTITY",
    "KEEP_EVERY",
    "KEEP_SECONDS",
    "PARTIAL",
    "RecordKeeper",
    "differences",
    "identity_tag",
    "load_kept",
    "prepare_folder",
    "remove_kept",
]

#: The folder, inside the output folder, that holds the finished videos of an unfinished run.
PARTIAL = "partial"
#: What the kept records depend on, written by rank 0 before any chunk.
IDENTITY = "identity.json"
FORMAT = "tokshift-eval-records"
VERSION = 1
#: Finished videos per process between two chunks (`tokshift evaluate --keep-every`).
KEEP_EVERY = 100
#: Finished videos are written at least this often (seconds), whatever `--keep-every` says.
KEEP_SECONDS = 300.0
#: Test hook: seconds to wait after writing each chunk (a stop signal ends the wait).
CHUNK_DELAY_VAR = "TOKSHIFT_EVAL_CHUNK_DELAY_SECONDS"

_CHUNK_GLOB = "chunk-*.jsonl"


def identity_tag(identity: Mapping[str, Any]) -> str:
    """A short hash of the identity; every chunk names the identity it was written under."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def _shown(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return "<changed>"
    text = repr(value)
    return text if len(text) <= 24 else text[:20] + "…'"


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """`key old -> new` for each setting that differs (long values shortened, lists named only)."""
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            a, b = old.get(key), new.get(key)
            out.append(f"{key} changed" if isinstance(a, (list, dict)) else f"{key} {_shown(a)} -> {_shown(b)}")
    return out


def _chunks(folder: Path) -> list[Path]:
    return sorted(folder.glob(_CHUNK_GLOB))


def _set_aside(folder: Path) -> Path:
    """Move identity.json and the chunks into a new `folder/stale-<UTC time>/`; nothing is deleted."""
    dest = new_stale_folder(folder)
    for p in [folder / IDENTITY, *_chunks(folder)]:
        if p.exists():
            shutil.move(str(p), str(dest / p.name))
    return dest


def prepare_folder(folder: str | os.PathLike[str], identity: Mapping[str, Any]) -> None:
    """Rank 0, before any process reads or writes a chunk: keep the records of `folder` when they
    were written under `identity`, else set them aside (saying why); then record `identity`."""
    folder = Path(folder)
    chunks = _chunks(folder) if folder.is_dir() else []
    if chunks:
        why = None
        try:
            old = json.loads((folder / IDENTITY).read_text(encoding="utf-8"))
            if not isinstance(old, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            why = f"their identity record {folder / IDENTITY} is unreadable ({exc})"
        else:
            diff = differences(old, identity)
            why = f"they were scored with other settings: {'; '.join(diff)}" if diff else None
        if why is None:
            return
        dest = _set_aside(folder)
        log.warning(
            "discarding the %d kept chunk(s) of finished videos in %s, as %s; moved them to %s and scoring "
            "every video again",
            len(chunks),
            folder,
            why,
            dest,
        )
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / IDENTITY, dict(identity))


def _read_chunk(path: Path, tag: str, video_ids: Sequence[str], fields: Iterable[str]) -> list[dict[str, Any]]:
    """The records of one chunk file; ValueError saying why when it cannot be trusted whole."""
    data = path.read_bytes()
    head, newline, body = data.partition(b"\n")
    if not newline:
        raise ValueError("it has no header line (truncated)")
    header = json.loads(head)
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
        raise ValueError(f"it is not a {FORMAT} v{VERSION} file")
    if header.get("identity") != tag:
        raise ValueError(f"it was written under identity {header.get('identity')}, not {tag}")
    if hashlib.sha256(body).hexdigest() != header.get("sha256"):
        raise ValueError("its content does not match its checksum (truncated or overwritten)")
    records = [json.loads(line) for line in body.splitlines()]
    if len(records) != header.get("videos"):
        raise ValueError(f"it holds {len(records)} records, its header says {header.get('videos')}")
    names = set(fields)
    for r in records:
        if not isinstance(r, dict) or set(r) != names:
            raise ValueError("a record has other fields than a video record")
        i = r["index"]
        if not isinstance(i, int) or not 0 <= i < len(video_ids) or r["video_id"] != str(video_ids[i]):
            raise ValueError(f"record {i!r} ({r['video_id']!r}) is not a video of these shards")
    return records


def load_kept(
    folder: str | os.PathLike[str],
    tag: str,
    video_ids: Sequence[str],
    fields: Iterable[str],
    warn: bool = True,
) -> dict[int, dict[str, Any]]:
    """Video index -> record of every video finished under identity `tag` (`video_ids`: the shards'
    videos in index order). Unreadable chunks are skipped, with a warning when `warn`."""
    folder = Path(folder)
    fields = list(fields)
    kept: dict[int, dict[str, Any]] = {}
    for path in _chunks(folder) if folder.is_dir() else []:
        try:
            records = _read_chunk(path, tag, video_ids, fields)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if warn:
                log.warning("ignoring kept chunk %s: %s; its videos are scored again", path, exc)
            continue
        for r in records:
            kept.setdefault(r["index"], r)
    return kept


def remove_kept(folder: str | os.PathLike[str]) -> None:
    """After the outputs are written: delete the chunks and identity, and the folder unless it
    holds `stale-*` records set aside from another run (those are the user's)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in [*_chunks(folder), folder / IDENTITY]:
        p.unlink(missing_ok=True)
    for tmp in folder.glob(".*.tmp"):  # a temporary file of an attempt killed mid-write
        tmp.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # stale-* folders stay


def _delay_seconds() -> float:
    text = os.environ.get(CHUNK_DELAY_VAR, "").strip()
    try:
        return max(0.0, float(text)) if text else 0.0
    except ValueError:
        return 0.0


class RecordKeeper:
    """One process's writer of finished videos: a chunk every `every` videos or `seconds` seconds.

    `kept` holds the records a previous attempt finished (all processes'); `stopped` says whether a
    stop signal has arrived, and `after_chunk(n)` runs after the n-th chunk this process wrote
    (the scheduled-signal test hook).
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        tag: str,
        kept: dict[int, dict[str, Any]],
        every: int,
        seconds: float = KEEP_SECONDS,
        stopped: Callable[[], bool] = lambda: False,
        after_chunk: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.folder = Path(folder)
        self.tag = tag
        self.kept = kept
        self.every = max(1, int(every))
        self.seconds = seconds
        self.stopped = stopped
        self.after_chunk = after_chunk
        self.pending: list[dict[str, Any]] = []
        self.chunks = 0
        self._last = time.monotonic()

    def add(self, record: dict[str, Any]) -> None:
        """A finished video; written out with the next chunk."""
        self.pending.append(record)
        if len(self.pending) >= self.every or time.monotonic() - self._last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        """Write the pending records as one chunk. A failed write (a full disk) is only a warning:
        the records stay pending for the next chunk, and the evaluation goes on."""
        self._last = time.monotonic()
        if not self.pending:
            return
        body = b"".join(json.dumps(r).encode("utf-8") + b"\n" for r in self.pending)
        header = {
            "format": FORMAT,
            "version": VERSION,
            "identity": self.tag,
            "videos": len(self.pending),
            "sha256": hashlib.sha256(body).hexdigest(),
        }
        # Named by its first video: a video is finished once, so no two valid chunks share a name.
        path = self.folder / f"chunk-{self.pending[0]['index']:09d}.jsonl"
        try:
            atomic_write_bytes(path, json.dumps(header).encode("utf-8") + b"\n" + body)
        except OSError as exc:
            log.warning(
                "could not keep %d finished videos in %s (%s); trying again later", len(self.pending), path, exc
            )
            return
        self.pending.clear()
        self.chunks += 1
        self.after_chunk(self.chunks)
        delay = _delay_seconds()
        end = time.monotonic() + delay
        while delay and time.monotonic() < end and not self.stopped():
            time.sleep(0.05)
