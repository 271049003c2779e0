"""Sharded LMDB frame store: one file per shard, one key per frame, a JSON header per shard.

Layout of a shard file (LMDB, ``subdir=False``, main database only):

* ``b"__header__"`` -> UTF-8 JSON ``{"format": "tokshift-frames", "version": 1, "classes": [...],
  "videos": [{"video_id", "nframes", "label", "label_index", "fps", "width", "height", "bytes"}, ...],
  ...attributes (split, shard, short_side, jpeg_quality)}``. A video's *number* is its position
  in ``videos``.
* ``b"f" + uint32_be(video number) + uint32_be(frame index)`` -> the JPEG bytes of that frame.

One key per frame keeps a T-frame clip at T small gets (~80 us warm): py-lmdb would touch every
page of a per-video value on each get. Big-endian keys keep a video's frames adjacent in the
B-tree. Writers build ``<name>.partial`` and rename it when complete, so a killed job leaves no
file that looks finished; readers open read-only without a lock file (shards never change after
the rename) and reopen after ``fork`` so DataLoader workers never share an environment.

The map size is sized from the input, doubled on ``MapFullError`` and shrunk to the data when the
shard is finalised, so nobody has to guess it and readers only map what exists.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from tokshift.data.jpeg import decode_rgb

__all__ = ["FORMAT", "VERSION", "ShardReader", "ShardWriter", "frame_key", "partial_path"]

FORMAT = "tokshift-frames"
VERSION = 1
HEADER_KEY = b"__header__"
MIN_MAP_SIZE = 64 << 20
_KEY = struct.Struct(">II")


def frame_key(video_number: int, frame_index: int) -> bytes:
    """LMDB key of one frame."""
    return b"f" + _KEY.pack(video_number, frame_index)


def partial_path(path: str | os.PathLike[str]) -> Path:
    """Where a shard is built before the rename that marks it complete."""
    p = Path(path)
    return p.with_name(p.name + ".partial")


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + "-lock")):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


class ShardWriter:
    """Write one shard: ``add_video`` per video (one transaction each), then ``finish``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        classes: Sequence[str],
        attrs: dict[str, Any] | None = None,
        map_size: int = 1 << 30,
    ) -> None:
        self.path = Path(path)
        self.tmp = partial_path(self.path)
        self.classes = list(classes)
        self.attrs = dict(attrs or {})
        self.videos: list[dict[str, Any]] = []
        self._ids: set[str] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove(self.tmp)  # leftovers of a killed run are rebuilt from scratch
        self.map_size = max(int(map_size), MIN_MAP_SIZE)
        self.env = lmdb.open(
            str(self.tmp),
            subdir=False,
            lock=False,
            map_size=self.map_size,
            sync=False,
            metasync=False,
            readahead=False,
            meminit=False,
            writemap=False,
            max_dbs=0,
        )

    def _grow(self, needed: int) -> None:
        self.map_size = max(2 * self.map_size, self.map_size + 2 * needed)
        self.env.set_mapsize(self.map_size)

    def _write(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        needed = sum(len(k) + len(v) + 64 for k, v in items)
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in items:
                        txn.put(key, value)
                return
            except lmdb.MapFullError:
                self._grow(needed)

    def add_video(self, video_id: str, frames: Sequence[bytes], meta: dict[str, Any]) -> None:
        """Store the JPEG ``frames`` of one video with its ``meta`` (label, fps, size, ...)."""
        if video_id in self._ids:
            raise ValueError(f"video id {video_id!r} is added twice to shard {self.path}")
        number = len(self.videos)
        self._write([(frame_key(number, i), bytes(f)) for i, f in enumerate(frames)])
        record = {"video_id": video_id, "nframes": len(frames), "bytes": int(sum(len(f) for f in frames))}
        record.update({k: v for k, v in meta.items() if k not in record})
        self.videos.append(record)
        self._ids.add(video_id)

    def finish(self) -> Path:
        """Write the header, shrink the map to the data, flush and rename into place."""
        header = {"format": FORMAT, "version": VERSION, **self.attrs, "classes": self.classes, "videos": self.videos}
        blob = json.dumps(header, ensure_ascii=False, sort_keys=True).encode("utf-8")
        self._write([(HEADER_KEY, blob)])
        info = self.env.info()
        used = (info["last_pgno"] + 1) * self.env.stat()["psize"]
        self.env.set_mapsize(max(used + (4 << 20), MIN_MAP_SIZE))
        self._write([(b"__complete__", b"1")])  # records the shrunk map size in the meta page
        self.env.sync(True)
        self.env.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close and delete the partial file."""
        try:
            self.env.close()
        finally:
            _remove(self.tmp)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self.abort()


# LMDB allows one environment per file and process, so readers of the same shard share one.
# Entries inherited through fork belong to the parent: they are dropped and reopened.
_ENVS: dict[str, tuple[int, lmdb.Environment, int]] = {}
_ENVS_LOCK = threading.Lock()


def _acquire_env(path: Path) -> lmdb.Environment:
    key = os.path.realpath(path)
    pid = os.getpid()
    with _ENVS_LOCK:
        entry = _ENVS.get(key)
        if entry is not None and entry[0] == pid:
            _ENVS[key] = (pid, entry[1], entry[2] + 1)
            return entry[1]
        if entry is not None:  # inherited from the parent process
            try:
                entry[1].close()
            except lmdb.Error:
                pass
            del _ENVS[key]
        if not path.is_file():
            hint = (
                " (a .partial file exists: its packing job did not finish; rerun it)"
                if partial_path(path).exists()
                else ""
            )
            raise FileNotFoundError(
                f"frame shard {path} does not exist{hint}; build it with `tokshift pack` "
                "(or the pipeline's pack_shard rule)"
            )
        try:
            env = lmdb.open(
                str(path), subdir=False, readonly=True, lock=False, readahead=False, meminit=False, max_spare_txns=1
            )
        except lmdb.Error as err:
            raise ValueError(f"{path} is not a readable LMDB frame shard ({err}); repack it") from err
        _ENVS[key] = (pid, env, 1)
        return env


def _release_env(path: Path) -> None:
    key = os.path.realpath(path)
    with _ENVS_LOCK:
        entry = _ENVS.get(key)
        if entry is None or entry[0] != os.getpid():
            return
        if entry[2] <= 1:
            entry[1].close()
            del _ENVS[key]
        else:
            _ENVS[key] = (entry[0], entry[1], entry[2] - 1)


class ShardReader:
    """Read-only, lock-free access to one packed shard; opened lazily and reopened after fork.

    Safe to pickle into DataLoader workers before or after first use (the environment is
    never pickled). ``meta(video_id)`` has ``nframes, label, label_index, fps, width, height``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._env: lmdb.Environment | None = None
        self._pid: int | None = None
        self._header: dict[str, Any] | None = None
        self._numbers: dict[str, int] | None = None

    # -- pickling / lifetime ----------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_header": self._header}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]
        self._header = state.get("_header")

    def close(self) -> None:
        """Release this reader's hold on the shared environment (it reopens on next use)."""
        if self._env is not None and self._pid == os.getpid():
            _release_env(self.path)
        self._env = None

    def __repr__(self) -> str:
        return f"ShardReader({str(self.path)!r})"

    def _environment(self) -> lmdb.Environment:
        if self._env is None or self._pid != os.getpid():
            self._env = _acquire_env(self.path)
            self._pid = os.getpid()
        return self._env

    @property
    def header(self) -> dict[str, Any]:
        """The shard's JSON header (format, classes, per-video records, packing attributes)."""
        if self._header is None:
            with self._environment().begin(buffers=False) as txn:
                blob = txn.get(HEADER_KEY)
            if blob is None:
                raise ValueError(f"{self.path} has no tokshift header: not a frame shard, or written incompletely")
            header = json.loads(blob.decode("utf-8"))
            if header.get("format") != FORMAT or int(header.get("version", 0)) > VERSION:
                raise ValueError(
                    f"{self.path} has format {header.get('format')!r} v{header.get('version')}; "
                    f"this tokshift reads {FORMAT!r} up to v{VERSION}: repack it"
                )
            self._header = header
        return self._header

    def _number(self, video_id: str) -> int:
        if self._numbers is None:
            self._numbers = {v["video_id"]: i for i, v in enumerate(self.header["videos"])}
        try:
            return self._numbers[video_id]
        except KeyError:
            raise KeyError(f"video {video_id!r} is not in shard {self.path}") from None

    # -- public API ---------------------------------------------------------------------------
    @property
    def video_ids(self) -> list[str]:
        return [v["video_id"] for v in self.header["videos"]]

    @property
    def classes(self) -> list[str]:
        return list(self.header["classes"])

    @property
    def attrs(self) -> dict[str, Any]:
        """Packing attributes (split, shard, short_side, jpeg_quality, ...)."""
        return {k: v for k, v in self.header.items() if k not in ("videos", "classes")}

    def __len__(self) -> int:
        return len(self.header["videos"])

    def __contains__(self, video_id: object) -> bool:
        try:
            self._number(str(video_id))
        except KeyError:
            return False
        return True

    def meta(self, video_id: str) -> dict[str, Any]:
        """Per-video record: nframes, label, label_index, fps, width, height, bytes, ..."""
        return dict(self.header["videos"][self._number(video_id)])

    def videos(self) -> Iterator[dict[str, Any]]:
        """All per-video records in stored order."""
        return iter(self.header["videos"])

    def _checked(self, video_id: str, indices: Iterable[int]) -> tuple[int, list[int]]:
        number = self._number(video_id)
        n = int(self.header["videos"][number]["nframes"])
        idx = [int(i) for i in indices]
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise IndexError(f"frame indices {bad[:5]} out of range for video {video_id!r} with {n} frames")
        return number, idx

    def read_frames(self, video_id: str, indices: Sequence[int]) -> list[bytes]:
        """JPEG bytes of the given frames (repeated indices are read once)."""
        number, idx = self._checked(video_id, indices)
        cache: dict[int, bytes] = {}
        with self._environment().begin(buffers=False) as txn:
            for i in idx:
                if i not in cache:
                    blob = txn.get(frame_key(number, i))
                    if blob is None:
                        raise KeyError(f"frame {i} of video {video_id!r} is missing from {self.path}; repack the shard")
                    cache[i] = blob
        return [cache[i] for i in idx]

    def read_decoded(self, video_id: str, indices: Sequence[int]) -> list[np.ndarray]:
        """Decoded (H, W, 3) uint8 RGB frames; each distinct index is decoded once (shared arrays)."""
        number, idx = self._checked(video_id, indices)
        cache: dict[int, np.ndarray] = {}
        with self._environment().begin(buffers=True) as txn:
            for i in idx:
                if i not in cache:
                    blob = txn.get(frame_key(number, i))
                    if blob is None:
                        raise KeyError(f"frame {i} of video {video_id!r} is missing from {self.path}; repack the shard")
                    cache[i] = decode_rgb(blob)
        return [cache[i] for i in idx]

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every key/value pair in key order (for verification and copying)."""
        with self._environment().begin(buffers=False) as txn:
            yield from txn.cursor()
