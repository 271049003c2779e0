"""Sharded LMDB frame store: one file per shard, one key per frame, a JSON header per shard.

Layout of a shard file (LMDB, ``subdir=False``, main database only); every stored value is
``uint32_be(zlib.crc32(payload)) + payload``:

* ``b"__header__"`` -> UTF-8 JSON ``{"format": "tokshift-frames", "version": 2, "classes": [...],
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

Integrity: a finished shard is *sealed* by the sidecar ``<shard>.lmdb.seal.json`` (written
atomically just before the rename, since the file size is only known after the last commit):
``{"format", "version", "size", "videos", "frames", "header_crc32"}``. Readers compare the
file's size with the seal and LMDB's own last page with the size *before* touching the memory
map, so a truncated shard is an error instead of a SIGBUS; the header's CRC must match the
seal, and each value's CRC is checked as it is read (~14 us per 30 kB frame: 1-2.5 % of
loading a clip, see bench/RESULTS_data.md). Broken B-tree pages surface as LMDB errors; those,
checksum mismatches and missing frames all raise :class:`ShardCorruptError`, naming the file and
how to re-pack it. Shards without a seal (format v1, before seals existed) are refused the same
way: their size cannot be checked safely before mapping them. Copy a shard with its seal.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from tokshift import provenance
from tokshift.data.jpeg import decode_rgb
from tokshift.errors import DataDamaged, InputMissing

__all__ = [
    "FORMAT",
    "VERSION",
    "ShardCorruptError",
    "ShardReader",
    "ShardWriter",
    "frame_key",
    "partial_path",
    "read_seal",
    "repack_hint",
    "seal_path",
]

FORMAT = "tokshift-frames"
VERSION = 2  # v2: CRC32-prefixed values and a seal file; v1 shards must be re-packed
HEADER_KEY = b"__header__"
MIN_MAP_SIZE = 64 << 20
_KEY = struct.Struct(">II")
_CRC = struct.Struct(">I")


class ShardCorruptError(DataDamaged):
    """A frame shard whose bytes are not what was packed: truncated, overwritten or unsealed.

    Never a per-video problem: the whole shard must be re-packed, so jobs stop on it.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str | None = None) -> None:
        if problem is None:  # rebuilt from a message: DataLoader re-raises a worker's error that way
            text = str(path)
            marker = f"{type(self).__name__}: "
            if "Traceback" in text and marker in text:  # keep the error, not the worker's traceback
                text = text.rsplit(marker, 1)[1].strip()
            named = re.match(r"frame shard (.+?) is damaged: ", text)
            self.path = Path(named.group(1)) if named else Path()
            self.problem = text
            super().__init__(text)
        else:
            self.path = Path(path)
            self.problem = problem
            super().__init__(f"frame shard {self.path} is damaged: {problem}; {repack_hint(self.path)}")

    def __reduce__(self) -> tuple[Any, ...]:  # survives the trip out of DataLoader workers
        return (type(self), (self.path, self.problem))


def repack_hint(path: str | os.PathLike[str]) -> str:
    """How to rebuild one shard (in the pipeline, or by hand).

    ``snakemake --force`` takes the target relative to the pipeline's directory (an absolute path
    is "no rule to produce"), and rebuilds only that shard; ``--forcerun pack_shard`` would redo all.
    """
    p = Path(path)
    if p.is_absolute() and p.is_relative_to(Path.cwd()):
        p = p.relative_to(Path.cwd())
    return (
        f"re-pack it: in the pipeline's directory run `snakemake --cores 1 --force {p}` "
        f"(or delete {path} and rerun the pipeline); without the pipeline, rerun "
        f"`tokshift pack --index <split index CSV> --shard <N> --out {path}`"
    )


def frame_key(video_number: int, frame_index: int) -> bytes:
    """LMDB key of one frame."""
    return b"f" + _KEY.pack(video_number, frame_index)


def partial_path(path: str | os.PathLike[str]) -> Path:
    """Where a shard is built before the rename that marks it complete."""
    p = Path(path)
    return p.with_name(p.name + ".partial")


def seal_path(path: str | os.PathLike[str]) -> Path:
    """The sidecar that records what a finished shard contains."""
    p = Path(path)
    return p.with_name(p.name + ".seal.json")


def _with_crc(payload: bytes) -> bytes:
    return _CRC.pack(zlib.crc32(payload)) + payload


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
        # The seal records which code and software packed the shard (tokshift.provenance).
        self.provenance = provenance.collect("pack")
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
            mode=0o666,  # the umask decides (LMDB's default leaves out group write even under umask 002)
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
        self._write([(frame_key(number, i), _with_crc(bytes(f))) for i, f in enumerate(frames)])
        record = {"video_id": video_id, "nframes": len(frames), "bytes": int(sum(len(f) for f in frames))}
        record.update({k: v for k, v in meta.items() if k not in record})
        self.videos.append(record)
        self._ids.add(video_id)

    def finish(self) -> Path:
        """Write the header, shrink the map to the data, flush, seal and rename into place."""
        header = {"format": FORMAT, "version": VERSION, **self.attrs, "classes": self.classes, "videos": self.videos}
        blob = json.dumps(header, ensure_ascii=False, sort_keys=True).encode("utf-8")
        self._write([(HEADER_KEY, _with_crc(blob))])
        info = self.env.info()
        used = (info["last_pgno"] + 1) * self.env.stat()["psize"]
        self.env.set_mapsize(max(used + (4 << 20), MIN_MAP_SIZE))
        self._write([(b"__complete__", _with_crc(b"1"))])  # records the shrunk map size in the meta page
        self.env.sync(True)
        self.env.close()
        seal = {
            "format": FORMAT,
            "version": VERSION,
            "size": self.tmp.stat().st_size,
            "videos": len(self.videos),
            "frames": int(sum(v["nframes"] for v in self.videos)),
            "header_crc32": zlib.crc32(blob),
            "provenance": provenance.finish(self.provenance),
        }
        sealed = seal_path(self.path)
        tmp_seal = sealed.with_name(sealed.name + ".tmp")
        try:
            with open(tmp_seal, "w", encoding="utf-8") as fh:
                json.dump(seal, fh, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_seal, sealed)
        except BaseException:
            tmp_seal.unlink(missing_ok=True)
            raise  # a seal without its shard is harmless: the shard is rebuilt
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
            raise InputMissing(
                f"frame shard {path} does not exist{hint}; build it with `tokshift pack` "
                "(or the pipeline's pack_shard rule)"
            )
        seal = read_seal(path)
        size = path.stat().st_size
        if size != seal["size"]:
            raise ShardCorruptError(path, f"it is {size} bytes but was sealed at {seal['size']} bytes (truncated?)")
        try:
            env = lmdb.open(
                str(path), subdir=False, readonly=True, lock=False, readahead=False, meminit=False, max_spare_txns=1
            )
        except lmdb.Error as err:
            raise ShardCorruptError(path, f"LMDB cannot open it ({err})") from err
        pages = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        if pages > size:  # mapped pages past the end of the file would be a SIGBUS on first touch
            env.close()
            raise ShardCorruptError(path, f"LMDB expects {pages} bytes of pages, the file has {size}")
        _ENVS[key] = (pid, env, 1)
        return env


def read_seal(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The seal of a finished shard; :class:`ShardCorruptError` when it is missing or unreadable."""
    sealed = seal_path(path)
    try:
        seal = json.loads(sealed.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShardCorruptError(
            path,
            f"its seal {sealed.name} is missing (a shard of format v1 from an older tokshift, a file that is not "
            "a frame shard, or a deleted seal), so its integrity cannot be checked",
        ) from None
    except (OSError, ValueError) as err:
        raise ShardCorruptError(path, f"its seal {sealed} is unreadable ({err})") from err
    if not isinstance(seal, dict) or seal.get("format") != FORMAT or not isinstance(seal.get("size"), int):
        raise ShardCorruptError(path, f"its seal {sealed} is not a {FORMAT} seal")
    if int(seal.get("version", 0)) != VERSION:
        raise ShardCorruptError(path, f"it has format v{seal.get('version')}, this tokshift reads v{VERSION}")
    return seal


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
            env = self._environment()
            seal = read_seal(self.path)
            with self._guard():
                with env.begin(buffers=False) as txn:
                    blob = txn.get(HEADER_KEY)
            if blob is None:
                raise ShardCorruptError(self.path, "it has no tokshift header")
            payload = self._verified(blob, "the header")
            if zlib.crc32(payload) != seal.get("header_crc32"):
                raise ShardCorruptError(self.path, "its header is not the one it was sealed with")
            header = json.loads(payload.decode("utf-8"))
            if header.get("format") != FORMAT or int(header.get("version", 0)) != VERSION:
                raise ShardCorruptError(
                    self.path, f"its header says {header.get('format')!r} v{header.get('version')}, not v{VERSION}"
                )
            if len(header.get("videos", ())) != seal.get("videos"):
                raise ShardCorruptError(self.path, "its header lists a different number of videos than its seal")
            self._header = header
        return self._header

    def _verified(self, blob: bytes | memoryview, what: str) -> Any:
        """The payload of a stored value whose CRC32 prefix matches; the error names ``what``."""
        if len(blob) < _CRC.size or _CRC.unpack_from(blob)[0] != zlib.crc32(blob[_CRC.size :]):
            raise ShardCorruptError(self.path, f"the checksum of {what} does not match")
        return blob[_CRC.size :]

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """LMDB's own corruption reports (bad pages, broken B-tree) as :class:`ShardCorruptError`."""
        try:
            yield
        except lmdb.Error as err:
            raise ShardCorruptError(self.path, f"LMDB reports {type(err).__name__}: {err}") from err

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
        with self._guard(), self._environment().begin(buffers=True) as txn:
            for i in idx:
                if i not in cache:  # one copy out of the map, after the check
                    blob = self._get(txn, video_id, number, i)
                    cache[i] = bytes(self._verified(blob, f"frame {i} of video {video_id!r}"))
        return [cache[i] for i in idx]

    def _get(self, txn: lmdb.Transaction, video_id: str, number: int, i: int) -> Any:
        blob = txn.get(frame_key(number, i))
        if blob is None:
            raise ShardCorruptError(self.path, f"frame {i} of video {video_id!r} is missing")
        return blob

    def read_decoded(self, video_id: str, indices: Sequence[int], accurate: bool = False) -> list[np.ndarray]:
        """Decoded (H, W, 3) uint8 RGB frames; each distinct index is decoded once (shared arrays).
        `accurate`: Pillow's decode instead of the fast one (tokshift.data.jpeg.decode_rgb)."""
        number, idx = self._checked(video_id, indices)
        return self._decode(video_id, number, idx, accurate)

    def read_decoded_at(
        self, number: int, nframes: int, indices: Sequence[int], video_id: str, accurate: bool = False
    ) -> list[np.ndarray]:
        """:meth:`read_decoded` for the video at position ``number`` with ``nframes`` frames, as the caller
        read them from the header once: DataLoader workers then never hold or search the header (a
        Kinetics shard lists ~15k videos), only the frames they load."""
        idx = [int(i) for i in indices]
        bad = [i for i in idx if not 0 <= i < nframes]
        if bad:
            raise IndexError(f"frame indices {bad[:5]} out of range for video {video_id!r} with {nframes} frames")
        return self._decode(video_id, int(number), idx, accurate)

    def drop_header(self) -> None:
        """Forget the cached header and id lookup (they are read again on demand)."""
        self._header = None
        self._numbers = None

    def _decode(self, video_id: str, number: int, idx: list[int], accurate: bool) -> list[np.ndarray]:
        cache: dict[int, np.ndarray] = {}
        with self._guard(), self._environment().begin(buffers=True) as txn:
            for i in idx:
                if i not in cache:
                    blob = self._get(txn, video_id, number, i)
                    cache[i] = decode_rgb(self._verified(blob, f"frame {i} of video {video_id!r}"), accurate)
        return [cache[i] for i in idx]

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every key and checked payload in key order (for verification and copying)."""
        with self._guard(), self._environment().begin(buffers=True) as txn:
            for key, value in txn.cursor():
                key = bytes(key)
                yield key, bytes(self._verified(value, f"the value of key {key!r}"))

    def verify(self) -> int:
        """Check every value's checksum (a full read of the shard); returns the number of values."""
        return sum(1 for _ in self.items())
