"""Kinetics-400 from the CVDF mirror: part lists, one archive per job, safe extraction, the replacement archive.

The mirror holds the clips trimmed to their annotated 10 s, named
``{youtube_id}_{time_start:06d}_{time_end:06d}.mp4``, in ``.tar.gz`` parts listed one URL a
line per split; it publishes no checksums. A part is downloaded with the shared resumable
downloader (``Range`` resume from ``<archive>.part``, retries, atomic rename), extracted at
once with tarfile's ``data`` filter (no absolute paths, no ``..``, no links out of the target,
no devices), optionally deleted, and recorded in a small JSON marker, the job's output. The
replacement archive holds re-encoded copies of clips that are corrupt in the parts: each of its
videos overwrites the extracted file with the same name, so it must be applied after every part.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokshift.data.sources import VIDEO_EXTENSIONS, scan_videos
from tokshift.download import BACKOFF_SECONDS, RETRIES, TIMEOUT_SECONDS, DownloadError, download
from tokshift.errors import BadInput, DataDamaged, TokshiftError
from tokshift.fileio import atomic_write_json, refuse_output_over_input, refuse_shared_outputs

__all__ = [
    "ARCHIVE_SUFFIXES",
    "ArchiveDamaged",
    "FetchError",
    "PartListError",
    "Part",
    "apply_replacement",
    "extract_archive",
    "fetch_part",
    "read_part_list",
]

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class FetchError(TokshiftError, RuntimeError):
    """A part or archive could not be fetched or unpacked; the message names the URL or file."""


class PartListError(FetchError, BadInput):
    """The part list is unusable or lacks the requested part: fix the list or its URL."""


class ArchiveDamaged(FetchError, DataDamaged):
    """An archive does not unpack (truncated, not a tar, or holding unsafe members)."""


@dataclass(frozen=True)
class Part:
    """One archive of a split: its name (the URL's file name without the archive suffix) and URL."""

    name: str
    url: str


def part_name(url: str) -> str:
    """``https://.../k400/train/part_0.tar.gz`` -> ``part_0``."""
    base = os.path.basename(urllib.parse.urlsplit(url).path)
    for suffix in ARCHIVE_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def read_part_list(path: str | os.PathLike[str]) -> list[Part]:
    """The parts of a downloaded part list (one URL a line; blank lines and ``#`` comments skipped)."""
    path = Path(path)
    parts: list[Part] = []
    seen: dict[str, int] = {}
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        url = text.strip()
        if not url or url.startswith("#"):
            continue
        name = part_name(url)
        if not _NAME.match(name):
            raise PartListError(f"{path} line {line}: cannot name a part after {url!r} (file name {name!r})")
        if name in seen:
            raise PartListError(f"{path} line {line}: part {name!r} is listed twice (first on line {seen[name]})")
        seen[name] = line
        parts.append(Part(name, url))
    if not parts:
        raise PartListError(f"part list {path} holds no URLs; check the list URL in the dataset's cvdf settings")
    return parts


def _data_umask_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """tarfile's ``data`` filter, then no mode: tarfile skips its chmod and the umask applies."""
    return tarfile.data_filter(member, dest).replace(mode=None, deep=False)


def extract_archive(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> dict[str, int]:
    """Unpack ``archive`` into ``dest`` safely; returns counts of files, videos and bytes written.

    tarfile's ``data`` filter refuses members that would land outside ``dest`` (absolute paths,
    ``..``, links pointing out) and special files; the archive's permission bits are dropped so
    the umask decides them, as for every other file the pipeline writes.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    files = videos = size = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                tar.extract(member, dest, filter=_data_umask_filter)
                if member.isfile():
                    files += 1
                    size += member.size
                    videos += Path(member.name).suffix.lower() in VIDEO_EXTENSIONS
    except tarfile.FilterError as err:
        raise ArchiveDamaged(f"{archive}: refused to extract an unsafe member ({err})") from err
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ArchiveDamaged(f"{archive} is not a complete tar archive ({type(err).__name__}: {err})") from err
    return {"files": files, "videos": videos, "bytes": size}


def fetch_part(
    list_path: str | os.PathLike[str],
    name: str,
    archives: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    marker: str | os.PathLike[str],
    *,
    delete_archive: bool = False,
    retries: int = RETRIES,
    backoff: float = BACKOFF_SECONDS,
    timeout: float = TIMEOUT_SECONDS,
    url_key: str | None = None,
    progress: bool | None = False,
) -> dict[str, Any]:
    """Download part ``name`` of ``list_path`` into ``archives``, extract it into ``dest``, write ``marker``.

    A failed download re-raises its :class:`DownloadError` kind naming the part and URL (a broken
    connection keeps its ``.part`` file, so the next run resumes it); an archive that does not
    unpack is deleted so the next run downloads it afresh.
    """
    by_name = {p.name: p for p in read_part_list(list_path)}
    if name not in by_name:
        raise PartListError(f"part {name!r} is not in {list_path} (it lists {len(by_name)} parts)")
    part = by_name[name]
    archive = Path(archives) / os.path.basename(urllib.parse.urlsplit(part.url).path)
    refuse_shared_outputs({"--marker": marker, "the archive": archive})
    for option, path in (("--marker", marker), ("the archive", archive)):
        refuse_output_over_input(path, [list_path], name=option)
    try:
        download(
            part.url, archive, retries=retries, timeout=timeout, progress=progress, backoff=backoff, url_key=url_key
        )
    except DownloadError as err:
        raise type(err)(f"part {name} ({part.url}) could not be downloaded: {err}") from err
    try:
        counts = extract_archive(archive, dest)
    except ArchiveDamaged as err:
        archive.unlink(missing_ok=True)
        message = f"part {name} ({part.url}): {err}; the archive was deleted, rerun to fetch it again"
        raise ArchiveDamaged(message) from err
    record = {"part": name, "url": part.url, "archive": str(archive), "dest": str(dest), **counts}
    record["archive_deleted"] = bool(delete_archive)
    atomic_write_json(Path(marker), record)  # first: a kill after it leaves an archive, not a refetch
    if delete_archive:
        archive.unlink()
    mb = counts["bytes"] / 1e6
    log.info("part %s: %d videos (%d files, %.1f MB) into %s", name, counts["videos"], counts["files"], mb, dest)
    return record


def apply_replacement(
    archive: str | os.PathLike[str], root: str | os.PathLike[str], marker: str | os.PathLike[str]
) -> dict[str, Any]:
    """Put the replacement archive's videos over the extracted clips of the same name under ``root``.

    A replacement without a counterpart (its clip was in no part) goes to ``root/replacement/``.
    """
    root = Path(root)
    on_disk = scan_videos(root) if root.is_dir() else {}
    replaced = added = 0
    with tempfile.TemporaryDirectory(prefix=".replacement-", dir=root) as tmp:
        extract_archive(archive, tmp)
        for new in sorted(Path(tmp).rglob("*")):
            if not new.is_file() or new.suffix.lower() not in VIDEO_EXTENSIONS:
                continue
            target = on_disk.get(new.stem)
            if target is None:
                target = root / "replacement" / new.name
                target.parent.mkdir(parents=True, exist_ok=True)
                added += 1
            else:
                replaced += 1
            shutil.move(str(new), str(target))
    record = {"archive": str(archive), "root": str(root), "replaced": replaced, "added": added}
    atomic_write_json(Path(marker), record)
    log.info("replacement archive %s: %d clips replaced, %d added under %s", archive, replaced, added, root)
    return record
