"""Pack the videos of one shard into an LMDB file: several ffmpeg processes in flight, one writer.

Each worker process runs one single-threaded ffmpeg at a time (two single-threaded processes
beat one two-threaded one) and JPEG-encodes the full-range 4:2:0 planes ffmpeg streams out
(no colour conversion anywhere); the calling process writes finished videos in index order,
one transaction per video, so the shard's content does not depend on timing. Bad videos are
skipped and listed with their reason in the failures CSV, and the packed ones in the listing CSV
(video id, label, frames, width, height, fps, bytes: what the shard holds, readable without
opening it, so a split's summary never reads whole shards); the shard is built under a
temporary name and renamed when complete, so a rerun after a kill rebuilds exactly the same
content. Frame folders (``frames`` datasets) are copied JPEG-for-JPEG without re-encoding.

A full disk is reported as :class:`DiskFullError` (the path, the free space, roughly how much
more the shard needs), not as LMDB's bare ``Input/output error`` (a short write on a full
filesystem); the partial file is deleted first, so the free space reported is what a rerun has.
"""

from __future__ import annotations

import csv
import errno
import logging
import multiprocessing
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
from tqdm import tqdm

from tokshift.data.decode import DEFAULT_TIMEOUT, VideoDecodeError, VideoFrames
from tokshift.data.jpeg import encode_yuv420, jpeg_size
from tokshift.data.sources import IndexRow, classes_path, iter_index, read_classes
from tokshift.data.store import ShardWriter
from tokshift.errors import BadInput, RetryLater
from tokshift.fileio import atomic_path, refuse_output_over_input, refuse_shared_outputs

__all__ = [
    "FAILURE_COLUMNS",
    "LISTING_COLUMNS",
    "DiskFullError",
    "PackResult",
    "Packed",
    "pack_rows",
    "pack_shard",
    "pack_video",
    "read_failures",
    "read_listing",
]

log = logging.getLogger(__name__)

FAILURE_COLUMNS = ("video_id", "path", "label", "reason")
LISTING_COLUMNS = ("video_id", "label", "frames", "width", "height", "fps", "bytes")
DEFAULT_SHORT_SIDE = 331
DEFAULT_QUALITY = 90
_FRAME_FILE = re.compile(r"^(?:img|frame|image)?_?(\d+)\.jpe?g$", re.IGNORECASE)


class DiskFullError(OSError, RetryLater):
    """The shard did not fit on its filesystem (an ``OSError`` with ENOSPC): free space, then rerun."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return str(self.strerror)


_LOW_FREE = 64 << 20  # an I/O error with less free space than this is a full disk


def _is_disk_full(err: BaseException, folder: Path) -> bool:
    """Whether ``err`` (raised while writing a shard in ``folder``) means the filesystem is full.

    LMDB reports a short write on a full disk as EIO ("Input/output error"), so EIO counts as
    full only when the filesystem really is nearly full; call this before deleting the partial file.
    """
    code = getattr(err, "errno", None)
    text = str(err)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text or "quota exceeded" in text:
        return True
    if code == errno.EIO or "Input/output error" in text:
        try:
            return shutil.disk_usage(folder).free < _LOW_FREE
        except OSError:
            return False
    return False


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _disk_full_message(out: Path, written: int, done: int, total: int) -> str:
    usage = shutil.disk_usage(out.parent)
    if done > 0:
        need = int(written / done * total * 1.1)
        estimate = (
            f"the shard had reached {_mb(written)} after {done} of {total} videos, so it needs roughly {_mb(need)}"
        )
        more = f"Free about {_mb(max(need - usage.free, 0))} more"
    else:
        estimate = f"the disk filled up within the first of {total} videos ({_mb(written)} written)"
        more = "Free more space"
    return (
        f"disk full while packing {out}: {usage.free / 1e6:.1f} MB free of {_mb(usage.total)} in {out.parent} "
        f"(after deleting the partial shard); {estimate}. {more} (or move the results folder to a bigger disk), "
        "then rerun the same command: the shard is rebuilt from scratch"
    )


@dataclass
class Packed:
    """The frames and facts of one successfully read video."""

    frames: list[bytes]
    fps: float
    width: int
    height: int


@dataclass
class PackResult:
    """What one shard job did."""

    path: Path
    failures_path: Path
    listing_path: Path
    videos: int = 0
    packed: int = 0
    frames: int = 0
    bytes: int = 0
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)


def _pack_folder(folder: Path, nframes: int | None = None) -> Packed:
    """The JPEG files of a frame folder as they are; with `nframes` (the list file's count) only
    img_00001 ... img_<nframes>, all of which must exist: the original samples by that count."""
    numbered = []
    for entry in os.scandir(folder):
        m = _FRAME_FILE.match(entry.name)
        if m and entry.is_file():
            numbered.append((int(m.group(1)), entry.path))
    if not numbered:
        raise VideoDecodeError(folder, "no JPEG frames (img_00001.jpg ...) in the frame folder")
    numbered.sort()
    if nframes is not None:
        numbered = [(k, p) for k, p in numbered if 1 <= k <= nframes]
        if [k for k, _ in numbered] != list(range(1, nframes + 1)):
            raise VideoDecodeError(
                folder,
                f"the list gives {nframes} frames, but the folder has {len(numbered)} of img_00001.jpg ... "
                f"img_{nframes:05d}.jpg; fix the list's count or re-extract the frames",
            )
    frames = [Path(p).read_bytes() for _, p in numbered]
    try:
        width, height = jpeg_size(frames[0])
    except ValueError as err:
        raise VideoDecodeError(numbered[0][1], f"unreadable JPEG frame ({err})") from None
    return Packed(frames, 0.0, width, height)


def pack_video(
    path: str | os.PathLike[str],
    short_side: int | None = DEFAULT_SHORT_SIDE,
    jpeg_quality: int = DEFAULT_QUALITY,
    timeout: float = DEFAULT_TIMEOUT,
    nframes: int | None = None,
) -> Packed:
    """Decode ``path`` (or read a frame folder, its first ``nframes`` when given) into JPEG frames;
    raises :class:`VideoDecodeError`."""
    p = Path(path)
    if p.is_dir():
        return _pack_folder(p, nframes)
    frames: list[bytes] = []
    with VideoFrames(p, short_side=short_side, timeout=timeout, pixel_format="yuv420") as reader:
        for y, u, v in reader:
            frames.append(encode_yuv420(y, u, v, jpeg_quality))
    return Packed(frames, reader.fps, reader.width, reader.height)


def _pack_job(
    path: str, short_side: int | None, jpeg_quality: int, timeout: float, nframes: int | None = None
) -> Packed | VideoDecodeError:
    """One video in a worker process; decode errors come back as values."""
    try:
        return pack_video(path, short_side=short_side, jpeg_quality=jpeg_quality, timeout=timeout, nframes=nframes)
    except VideoDecodeError as err:
        return err


def _ordered(rows: Sequence[IndexRow], workers: int, job: tuple[Any, ...]) -> Iterator[tuple[IndexRow, Any]]:
    """Pack ``rows`` on ``workers`` processes, yielding results in input order with a bounded window."""
    if workers <= 1:
        for row in rows:
            yield row, _pack_job(row.path, *job, row.nframes)
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding LMDB and threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        window: deque[tuple[IndexRow, Future[Any]]] = deque()
        for row in rows:
            window.append((row, pool.submit(_pack_job, row.path, *job, row.nframes)))
            if len(window) >= 2 * workers:
                head, fut = window.popleft()
                yield head, fut.result()
        while window:
            head, fut = window.popleft()
            yield head, fut.result()


def _write_failures(path: Path, failures: list[dict[str, str]]) -> None:
    _write_csv(path, FAILURE_COLUMNS, failures)


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Atomically (a failure, e.g. a full disk, leaves the old file and no temporary)."""
    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        fh.flush()
        os.fsync(fh.fileno())


def read_failures(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Rows of a failures CSV (empty when the file does not exist)."""
    p = Path(path)
    if not p.is_file():
        return []
    with open(p, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def listing_path_for(shard: str | os.PathLike[str]) -> Path:
    """``.../shard-3.lmdb`` -> ``.../shard-3.videos.csv`` (the pack command's default)."""
    return Path(shard).with_suffix(".videos.csv")


def _listing_rows(records: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for v in records:
        yield {**v, "frames": v["nframes"]}


def read_listing(path: str | os.PathLike[str]) -> Iterator[dict[str, str]]:
    """Rows of a shard's per-video listing, streamed (the file may list tens of thousands of videos)."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != LISTING_COLUMNS:
            raise BadInput(f"{path}: not a shard listing (columns {reader.fieldnames}, expected {LISTING_COLUMNS})")
        yield from reader


def default_workers() -> int:
    """Cores this process may use (SLURM's cpus-per-task or the affinity mask)."""
    for var in ("SLURM_CPUS_PER_TASK", "TOKSHIFT_WORKERS"):
        if os.environ.get(var, "").isdigit():
            return max(1, int(os.environ[var]))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def pack_rows(
    rows: Sequence[IndexRow],
    classes: Sequence[str],
    out: str | os.PathLike[str],
    failures: str | os.PathLike[str],
    *,
    listing: str | os.PathLike[str] | None = None,
    short_side: int | None = DEFAULT_SHORT_SIDE,
    jpeg_quality: int = DEFAULT_QUALITY,
    workers: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    attrs: dict[str, Any] | None = None,
    progress: bool | None = True,
) -> PackResult:
    """Pack ``rows`` into the shard file ``out``, list unreadable videos in ``failures`` and the
    packed ones in ``listing`` (default: next to ``out``, ``.videos.csv``). ``progress`` None
    shows the bar only when stderr is a terminal.

    With ``workers > 1`` videos are decoded in spawned worker processes, so a script calling
    this must guard its entry point with ``if __name__ == "__main__":``.
    """
    if not 1 <= int(jpeg_quality) <= 100:
        raise BadInput(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    out, failures_path = Path(out), Path(failures)
    listing_path = Path(listing) if listing is not None else listing_path_for(out)
    workers = default_workers() if not workers else int(workers)
    t0 = time.perf_counter()
    result = PackResult(out, failures_path, listing_path, videos=len(rows))
    input_bytes = sum(os.path.getsize(r.path) for r in rows if os.path.isfile(r.path))
    meta_attrs = {"short_side": short_side, "jpeg_quality": int(jpeg_quality), **(attrs or {})}

    full: tuple[int, int] | None = None  # (bytes written, videos done) when the disk filled up
    try:
        with ShardWriter(out, classes, attrs=meta_attrs, map_size=(1 << 30) + 12 * input_bytes) as writer:
            try:
                _pack_into(writer, rows, workers, short_side, jpeg_quality, timeout, failures_path, result, progress)
            except (lmdb.Error, OSError) as err:
                if _is_disk_full(err, out.parent):  # judged before the partial file is deleted
                    full = (_file_size(writer.tmp), len(result.failures) + result.packed)
                raise
    except (lmdb.Error, OSError) as err:
        if full is None:
            raise
        raise DiskFullError(_disk_full_message(out, full[0], full[1], len(rows))) from err
    result.seconds = time.perf_counter() - t0
    log.info(
        "packed %s: %d/%d videos, %d frames, %.1f MB, %d failed, %.1f s (%.0f frames/s)",
        out,
        result.packed,
        result.videos,
        result.frames,
        result.bytes / 1e6,
        len(result.failures),
        result.seconds,
        result.frames / max(result.seconds, 1e-9),
    )
    return result


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _pack_into(
    writer: ShardWriter,
    rows: Sequence[IndexRow],
    workers: int,
    short_side: int | None,
    jpeg_quality: int,
    timeout: float,
    failures_path: Path,
    result: PackResult,
    progress: bool | None,
) -> None:
    """Decode ``rows`` and write them to ``writer``, list the failures, seal the shard."""
    disable = None if progress is None else not progress  # None: a bar on terminals only
    bar = tqdm(total=len(rows), desc=f"pack {writer.path.name}", unit="video", disable=disable, leave=False)
    job = (short_side, int(jpeg_quality), float(timeout))
    try:
        for row, packed in _ordered(rows, min(workers, max(len(rows), 1)), job):
            bar.update(1)
            if isinstance(packed, VideoDecodeError):
                log.warning("skipping %s: %s", row.path, packed.reason)
                result.failures.append(
                    {"video_id": row.video_id, "path": row.path, "label": row.label, "reason": packed.reason}
                )
                continue
            writer.add_video(
                row.video_id,
                packed.frames,
                {
                    "label": row.label,
                    "label_index": row.label_index,
                    "fps": round(float(packed.fps), 6),
                    "width": packed.width,
                    "height": packed.height,
                },
            )
            result.packed += 1
            result.frames += len(packed.frames)
            result.bytes += sum(len(f) for f in packed.frames)
            bar.set_postfix(frames=result.frames, failed=len(result.failures), refresh=False)
    finally:
        bar.close()
    _write_failures(failures_path, result.failures)
    _write_csv(result.listing_path, LISTING_COLUMNS, list(_listing_rows(writer.videos)))
    writer.finish()


def pack_shard(
    index: str | os.PathLike[str],
    shard: int,
    out: str | os.PathLike[str],
    failures: str | os.PathLike[str] | None = None,
    *,
    listing: str | os.PathLike[str] | None = None,
    short_side: int | None = DEFAULT_SHORT_SIDE,
    jpeg_quality: int = DEFAULT_QUALITY,
    workers: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool | None = True,
) -> PackResult:
    """Pack the videos of shard ``shard`` of the index CSV ``index`` into ``out`` (an LMDB file)."""
    rows: list[IndexRow] = []
    split_names: set[str] = set()
    for row in iter_index(index):  # streamed: a job holds its own shard's rows, not the whole index
        split_names.add(row.split)
        if row.shard == int(shard):
            rows.append(row)
    classes = read_classes(index)
    splits = sorted(split_names)
    if failures is None:
        failures = Path(out).with_suffix(".failures.csv")
    listing = listing if listing is not None else listing_path_for(out)
    outputs = {"--out": out, "--failures": failures, "--videos": listing}
    refuse_shared_outputs(outputs)
    inputs = [index, classes_path(index), *(r.path for r in rows)]
    for option, path in outputs.items():
        refuse_output_over_input(path, inputs, name=option)
    attrs = {"shard": int(shard), "split": splits[0] if len(splits) == 1 else ",".join(splits)}
    return pack_rows(
        rows,
        classes,
        out,
        failures,
        listing=listing,
        short_side=short_side,
        jpeg_quality=jpeg_quality,
        workers=workers,
        timeout=timeout,
        attrs=attrs,
        progress=progress,
    )
