"""Dataset sources -> one index per split: video id, path, label, label index, split, shard.

Four kinds are understood (``spec["kind"]``):

* ``kinetics``: the official Kinetics-400 layout, videos named ``{youtube_id}_{start:06d}_{end:06d}.ext``
  (or just ``{youtube_id}.ext``) anywhere under ``root`` plus the annotation CSVs
  (``label,youtube_id,time_start,time_end,split[,is_cc]``);
* ``csv``: ``path,label`` CSVs per split (paths relative to the CSV or absolute, labels are names);
* ``demo``: what ``tokshift demo`` generated (``root/train.csv``, ``root/val.csv``), read as ``csv``;
* ``frames``: frame folders in the original project's layout with ``path nframes label`` lists.

Class index = position in the sorted list of all labels over all splits (``frames`` keeps the
list's integer labels). Annotated videos missing on disk are reported, never fatal. The shard of
a video is a stable hash of its id, so adding videos never moves the others.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tokshift.errors import BadInput
from tokshift.fileio import atomic_write_text

__all__ = [
    "SPLITS",
    "VIDEO_EXTENSIONS",
    "DatasetSpecError",
    "IndexResult",
    "IndexRow",
    "MissingRow",
    "annotation_files",
    "build_index",
    "classes_path",
    "missing_path",
    "read_classes",
    "iter_index",
    "read_index",
    "shard_of",
    "write_index",
]

SPLITS = ("train", "val")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "validate": "val",
    "validation": "val",
    "valid": "val",
    "test": "test",
}
VIDEO_EXTENSIONS = frozenset({".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".3gp"})
INDEX_COLUMNS = ("video_id", "path", "label", "label_index", "split", "shard", "nframes")
#: The columns of an index written before `nframes` was recorded (still read).
_INDEX_COLUMNS_BEFORE_NFRAMES = INDEX_COLUMNS[:-1]


def is_index_header(columns: Iterable[str]) -> bool:
    """Whether `columns` head an index CSV of this project (with or without `nframes`)."""
    return tuple(columns) in (INDEX_COLUMNS, _INDEX_COLUMNS_BEFORE_NFRAMES)


MISSING_COLUMNS = ("video_id", "path", "label", "split", "reason")


class DatasetSpecError(BadInput):
    """A dataset description or annotation file is unusable; the message says which and why."""


@dataclass(frozen=True)
class IndexRow:
    video_id: str
    path: str
    label: str
    label_index: int
    split: str
    shard: int
    # Frames the list file gives a frame folder (`frames` datasets): the original samples by it; None
    # for a video, whose frames are counted when it is decoded.
    nframes: int | None = None


@dataclass(frozen=True)
class MissingRow:
    video_id: str
    path: str
    label: str
    split: str
    reason: str


@dataclass
class IndexResult:
    """The index of one split: present videos, annotated-but-missing ones, and all class names."""

    split: str
    classes: list[str]
    rows: list[IndexRow] = field(default_factory=list)
    missing: list[MissingRow] = field(default_factory=list)


def shard_of(video_id: str, shards: int) -> int:
    """Stable shard of a video id (first 8 bytes of its SHA-1), independent of Python's hash seed."""
    if shards < 1:
        raise DatasetSpecError(f"the number of shards must be >= 1, got {shards}")
    digest = hashlib.sha1(video_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def normalise_split(value: str, where: str = "") -> str:
    key = value.strip().lower()
    if key not in SPLIT_ALIASES:
        raise DatasetSpecError(f"unknown split {value!r}{where}; use one of: train, val (alias: validate)")
    return SPLIT_ALIASES[key]


def _check_split(split: str) -> str:
    s = normalise_split(split)
    if s not in SPLITS:
        raise DatasetSpecError(f"split must be 'train' or 'val', got {split!r}")
    return s


def _require(spec: Mapping[str, Any], key: str, kind: str) -> Any:
    if key not in spec or spec[key] in (None, ""):
        raise DatasetSpecError(
            f"dataset of kind {kind!r} needs the key {key!r} in its description (got keys {sorted(spec)})"
        )
    return spec[key]


def _split_file(spec: Mapping[str, Any], key: str, split: str, kind: str) -> Path:
    files = _require(spec, key, kind)
    if not isinstance(files, Mapping):
        raise DatasetSpecError(f"{kind} dataset: {key!r} must map split names to files, got {files!r}")
    by_split = {normalise_split(str(k), f" in {key!r}"): v for k, v in files.items()}
    if split not in by_split:
        raise DatasetSpecError(f"{kind} dataset: {key!r} has no entry for split {split!r} (has {sorted(by_split)})")
    path = Path(str(by_split[split])).expanduser()
    if not path.is_file():
        raise DatasetSpecError(
            f"{kind} dataset: the {split} file {path} does not exist; fix {key}.{split} in the config"
        )
    return path


def _all_split_files(spec: Mapping[str, Any], key: str, kind: str) -> dict[str, Path]:
    files = _require(spec, key, kind)
    out = {}
    for name in files:
        s = normalise_split(str(name), f" in {key!r}")
        if s in SPLITS:
            out[s] = _split_file(spec, key, s, kind)
    return out


def _open_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    return header, rows


def _require_videos(result: IndexResult, annotations: Path, row_format: str) -> IndexResult:
    """A split without a single video on disk fails here, not hours later as ``num_classes=0`` in training."""
    if result.rows:
        return result
    if not result.missing:
        raise DatasetSpecError(
            f"{annotations} lists no videos for split {result.split!r} (it is empty or holds only a header): "
            f"add {row_format}, or point the dataset config at the right file"
        )
    first = result.missing[0]
    raise DatasetSpecError(
        f"none of the {len(result.missing)} videos that {annotations} lists for split {result.split!r} exists "
        f"(the first, {first.video_id!r}, is not at {first.path or 'any path under the root'!r}): "
        "fix the paths or the dataset root in the config"
    )


# -- csv / demo ---------------------------------------------------------------------------------
def _csv_entries(path: Path) -> list[tuple[str, Path, str]]:
    header, rows = _open_csv(path)
    missing = {"path", "label"} - set(header)
    if missing:
        raise DatasetSpecError(f"{path}: CSV needs the columns path,label (missing {sorted(missing)}; found {header})")
    out = []
    for line, row in enumerate(rows, start=2):
        if not row["path"]:
            raise DatasetSpecError(f"{path} line {line}: empty path")
        if not row["label"]:
            raise DatasetSpecError(f"{path} line {line}: empty label for {row['path']!r}")
        p = Path(row["path"]).expanduser()
        full = p if p.is_absolute() else path.parent / p
        out.append((row["path"], Path(os.path.abspath(full)), row["label"]))
    return out


def _index_csv(spec: Mapping[str, Any], split: str, shards: int, kind: str) -> IndexResult:
    if kind == "demo":
        root = Path(str(_require(spec, "root", kind))).expanduser()
        files = {s: root / f"{s}.csv" for s in SPLITS}
        for f in files.values():
            if not f.is_file():
                raise DatasetSpecError(
                    f"demo dataset: {f} does not exist; generate it with `tokshift demo --out {root}`"
                )
    else:
        files = _all_split_files(spec, "splits", kind)
        if split not in files:
            raise DatasetSpecError(f"csv dataset: 'splits' has no {split!r} entry")
    entries = {s: _csv_entries(f) for s, f in files.items()}
    classes = sorted({label for ents in entries.values() for _, _, label in ents})
    position = {c: i for i, c in enumerate(classes)}
    result = IndexResult(split=split, classes=classes)
    seen: dict[str, int] = {}
    for line, (vid, full, label) in enumerate(entries[split], start=2):
        if vid in seen:
            raise DatasetSpecError(f"{files[split]} line {line}: {vid!r} is listed twice (first on line {seen[vid]})")
        seen[vid] = line
        if full.is_file() or full.is_fifo():
            result.rows.append(IndexRow(vid, str(full), label, position[label], split, shard_of(vid, shards)))
        else:
            result.missing.append(MissingRow(vid, str(full), label, split, "file not found"))
    return _require_videos(result, files[split], "one 'path,label' row per video")


# -- kinetics -----------------------------------------------------------------------------------
def kinetics_video_id(youtube_id: str, time_start: str | float, time_end: str | float) -> str:
    """The official file stem ``{youtube_id}_{time_start:06d}_{time_end:06d}``."""
    return f"{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}"


def scan_videos(root: Path) -> dict[str, str]:
    """Map file stem -> absolute path for every video file under ``root`` (first in sorted order wins).

    Plain strings, not ``Path`` objects: a Kinetics tree holds 260k files.
    """
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(os.path.abspath(root), followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_EXTENSIONS and stem not in found:
                found[stem] = os.path.join(dirpath, name)
    return found


_KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")


def _kinetics_rows(path: Path) -> list[tuple[str, ...]]:
    """``(label, youtube_id, time_start, time_end, split)`` per row (split empty when the CSV has none)."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        if not {"label", "youtube_id", "time_start", "time_end"} <= set(header):
            raise DatasetSpecError(
                f"{path}: a Kinetics annotation CSV needs the columns "
                f"label,youtube_id,time_start,time_end[,split] (found {header})"
            )
        cols = [header.index(c) if c in header else None for c in _KINETICS_COLUMNS]
        width = len(header)
        rows = []
        for row in reader:
            if len(row) < width:
                row = row + [""] * (width - len(row))
            rows.append(tuple("" if c is None else row[c].strip() for c in cols))
    return rows


def _index_kinetics(spec: Mapping[str, Any], split: str, shards: int) -> IndexResult:
    root = Path(str(_require(spec, "root", "kinetics"))).expanduser()
    if not root.is_dir():
        raise DatasetSpecError(f"kinetics dataset: root {root} is not a directory; fix 'root' in the config")
    files = _all_split_files(spec, "annotations", "kinetics")
    if split not in files:
        raise DatasetSpecError(f"kinetics dataset: 'annotations' has no {split!r} entry")
    annotations = {s: _kinetics_rows(f) for s, f in files.items()}
    classes = sorted({r[0] for rows in annotations.values() for r in rows if r[0]})
    position = {c: i for i, c in enumerate(classes)}
    on_disk = scan_videos(root)
    result = IndexResult(split=split, classes=classes)
    seen: set[str] = set()
    rows = annotations[split]
    split_of: dict[str, str] = {}  # split column value -> normalised split (checked once per value)
    for line, (label, youtube_id, time_start, time_end, row_split) in enumerate(rows, start=2):
        if row_split:
            if row_split not in split_of:
                split_of[row_split] = normalise_split(row_split, f" ({files[split]} line {line})")
            if split_of[row_split] != split:
                continue
        if not label:
            continue  # unlabelled (test) rows carry nothing to train or score
        try:
            vid = kinetics_video_id(youtube_id, time_start, time_end)
        except ValueError:
            raise DatasetSpecError(
                f"{files[split]} line {line}: time_start/time_end must be numbers, got {time_start!r}, {time_end!r}"
            ) from None
        if vid in seen:
            continue
        seen.add(vid)
        path = on_disk.get(vid) or on_disk.get(youtube_id)  # some copies name files by YouTube id only
        if path is None:
            result.missing.append(MissingRow(vid, "", label, split, "not found under root"))
        else:
            result.rows.append(IndexRow(vid, path, label, position[label], split, shard_of(vid, shards)))
    if rows and not result.rows and not result.missing:
        values = sorted({r[4] for r in rows})
        raise DatasetSpecError(f"{files[split]}: no labelled rows for split {split!r} (split column has {values})")
    return _require_videos(result, files[split], "one 'label,youtube_id,time_start,time_end' row per video")


# -- frame folders ------------------------------------------------------------------------------
def _frames_list(path: Path) -> list[tuple[str, int, int]]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for line, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            parts = text.rsplit(None, 2)
            if len(parts) != 3:
                raise DatasetSpecError(f"{path} line {line}: expected 'path nframes label', got {text.strip()!r}")
            try:
                out.append((parts[0], int(parts[1]), int(parts[2])))
            except ValueError:
                raise DatasetSpecError(
                    f"{path} line {line}: nframes and label must be integers, got {text.strip()!r}"
                ) from None
    return out


def _index_frames(spec: Mapping[str, Any], split: str, shards: int) -> IndexResult:
    root = Path(str(_require(spec, "root", "frames"))).expanduser()
    if not root.is_dir():
        raise DatasetSpecError(f"frames dataset: root {root} is not a directory; fix 'root' in the config")
    lists = {s: _frames_list(f) for s, f in _all_split_files(spec, "lists", "frames").items()}
    if split not in lists:
        raise DatasetSpecError(f"frames dataset: 'lists' has no {split!r} entry")
    max_label = max((lab for entries in lists.values() for _, _, lab in entries), default=-1)
    if spec.get("classes"):
        cpath = Path(str(spec["classes"])).expanduser()
        if not cpath.is_file():
            raise DatasetSpecError(f"frames dataset: classes file {cpath} does not exist")
        classes = [ln.strip() for ln in cpath.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if max_label >= len(classes):
            raise DatasetSpecError(
                f"frames dataset: label {max_label} in the lists but {cpath} names only {len(classes)} classes"
            )
    else:
        classes = [str(i) for i in range(max_label + 1)]
    result = IndexResult(split=split, classes=classes)
    seen = set()
    for rel, nframes, label in lists[split]:
        if label < 0:
            raise DatasetSpecError(f"frames dataset: negative label {label} for {rel!r}")
        vid = rel.strip("/")
        if vid in seen:
            continue
        seen.add(vid)
        folder = Path(rel) if Path(rel).is_absolute() else root / rel
        if folder.is_dir():
            result.rows.append(
                IndexRow(vid, os.path.abspath(folder), classes[label], label, split, shard_of(vid, shards), nframes)
            )
        else:
            result.missing.append(
                MissingRow(vid, os.path.abspath(folder), classes[label], split, "frame folder not found")
            )
    return _require_videos(
        result, _split_file(spec, "lists", split, "frames"), "one 'path nframes label' line per video"
    )


# -- entry points -------------------------------------------------------------------------------
def build_index(spec: Mapping[str, Any], split: str, shards: int) -> IndexResult:
    """Index one split of the dataset described by ``spec`` (a ``datasets.NAME`` config entry)."""
    if not isinstance(spec, Mapping) or "kind" not in spec:
        raise DatasetSpecError(f"a dataset description needs a 'kind' (demo, kinetics, csv or frames); got {spec!r}")
    split = _check_split(split)
    if shards < 1:
        raise DatasetSpecError(f"frames.shards must be >= 1, got {shards}")
    kind = str(spec["kind"]).lower()
    if kind in ("csv", "demo"):
        return _index_csv(spec, split, shards, kind)
    if kind == "kinetics":
        return _index_kinetics(spec, split, shards)
    if kind == "frames":
        return _index_frames(spec, split, shards)
    raise DatasetSpecError(f"unknown dataset kind {spec['kind']!r}; use demo, kinetics, csv or frames")


def annotation_files(spec: Mapping[str, Any]) -> list[Path]:
    """The files a dataset description names for `build_index` to read (whether they exist or not),
    so `tokshift index --out` can be refused where it would overwrite one of them."""
    if not isinstance(spec, Mapping):
        return []
    kind = str(spec.get("kind", "")).lower()
    found: list[Path] = []
    if kind == "demo" and spec.get("root"):
        found += [Path(str(spec["root"])).expanduser() / f"{s}.csv" for s in SPLITS]
    for key in ("splits", "annotations", "lists"):
        if isinstance(spec.get(key), Mapping):
            found += [Path(str(v)).expanduser() for v in spec[key].values() if v]
    if spec.get("classes"):
        found.append(Path(str(spec["classes"])).expanduser())
    return found


def missing_path(index_csv: str | os.PathLike[str]) -> Path:
    """``results/.../train.csv`` -> ``results/.../train.missing.csv``."""
    p = Path(index_csv)
    return p.with_name(p.stem + ".missing.csv")


def classes_path(index_csv: str | os.PathLike[str]) -> Path:
    """``results/.../train.csv`` -> ``results/.../train.classes.txt`` (all class names, one a line)."""
    p = Path(index_csv)
    return p.with_name(p.stem + ".classes.txt")


def _write_rows(path: Path, columns: Iterable[str], rows: Iterable[Any]) -> None:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(list(columns))
    for row in rows:
        writer.writerow(["" if (v := getattr(row, c)) is None else v for c in columns])
    atomic_write_text(path, buf.getvalue())


def write_index(result: IndexResult, out: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """Write the index CSV, its ``.missing.csv`` and ``.classes.txt``; returns the three paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_rows(out, INDEX_COLUMNS, result.rows)
    miss = missing_path(out)
    _write_rows(miss, MISSING_COLUMNS, result.missing)
    cls = classes_path(out)
    atomic_write_text(cls, "".join(c + "\n" for c in result.classes))
    return out, miss, cls


def iter_index(path: str | os.PathLike[str]) -> Iterator[IndexRow]:
    """Stream the rows of an index CSV written by :func:`write_index` (a packing job keeps only its shard's)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetSpecError(f"index {path} does not exist; build it with `tokshift index`")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        if not is_index_header(header):
            raise DatasetSpecError(f"{path}: not a tokshift index (columns {header}, expected {list(INDEX_COLUMNS)})")
        for vid, vpath, label, label_index, split, shard, *rest in reader:
            nframes = int(rest[0]) if rest and rest[0] else None
            yield IndexRow(vid, vpath, label, int(label_index), split, int(shard), nframes)


def read_index(path: str | os.PathLike[str]) -> list[IndexRow]:
    """Read an index CSV written by :func:`write_index`."""
    return list(iter_index(path))


def read_missing(path: str | os.PathLike[str]) -> list[MissingRow]:
    """Read the ``.missing.csv`` next to an index (empty when absent)."""
    path = Path(path)
    if not path.is_file():
        return []
    _, rows = _open_csv(path)
    return [MissingRow(**{f.name: r.get(f.name, "") for f in fields(MissingRow)}) for r in rows]


def read_classes(index_csv: str | os.PathLike[str], rows: list[IndexRow] | None = None) -> list[str]:
    """All class names for an index: its ``.classes.txt``, else reconstructed from the rows."""
    cls = classes_path(index_csv)
    if cls.is_file():
        return [ln for ln in cls.read_text(encoding="utf-8").splitlines() if ln]
    rows = rows if rows is not None else read_index(index_csv)
    names: dict[int, str] = {r.label_index: r.label for r in rows}
    size = max(names, default=-1) + 1
    return [names.get(i, str(i)) for i in range(size)]
