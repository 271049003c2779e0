"""The LMDB frame store: round trip, map growth, lazy lock-free readers across fork/spawn and pickling,
and shards that prove their integrity (seal, per-value CRC) instead of crashing or misreading."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import lmdb
import numpy as np
import pytest

if TYPE_CHECKING:
    from tokshift.data.store import ShardReader


REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, videos: dict[str, int], size: tuple[int, int] = (24, 32), **kw) -> dict[str, list[bytes]]:
    from tokshift.data.jpeg import encode_rgb
    from tokshift.data.store import ShardWriter

    rng = np.random.default_rng(0)
    data = {}
    with ShardWriter(path, ["a", "b"], attrs={"split": "train", "shard": 0}, **kw) as w:
        for k, (vid, n) in enumerate(videos.items()):
            frames = [encode_rgb(rng.integers(0, 255, (*size, 3), dtype=np.uint8), 90) for _ in range(n)]
            w.add_video(
                vid,
                frames,
                {"label": "ab"[k % 2], "label_index": k % 2, "fps": 25.0, "width": size[1], "height": size[0]},
            )
            data[vid] = frames
        w.finish()
    return data


def test_round_trip_header_meta_and_frames(tmp_path: Path) -> None:
    from tokshift.data.jpeg import decode_rgb
    from tokshift.data.store import ShardReader, partial_path

    path = tmp_path / "s.lmdb"
    data = _write(path, {"v one": 5, "ü/2": 3})
    r = ShardReader(path)
    assert r.video_ids == ["v one", "ü/2"] and len(r) == 2 and "ü/2" in r and "x" not in r
    assert r.classes == ["a", "b"] and r.attrs["split"] == "train"
    m = r.meta("ü/2")
    assert (m["nframes"], m["label"], m["label_index"], m["fps"], m["width"], m["height"]) == (3, "b", 1, 25.0, 32, 24)
    assert m["bytes"] == sum(len(f) for f in data["ü/2"])
    assert r.read_frames("v one", [4, 0, 4]) == [data["v one"][4], data["v one"][0], data["v one"][4]]
    dec = r.read_decoded("v one", [1, 1])
    assert dec[0].shape == (24, 32, 3) and np.array_equal(dec[0], decode_rgb(data["v one"][1]))
    with pytest.raises(IndexError, match=r"out of range for video 'v one' with 5 frames"):
        r.read_frames("v one", [5])
    with pytest.raises(KeyError, match="not in shard"):
        r.meta("nope")
    assert not Path(str(path) + "-lock").exists() and not partial_path(path).exists()


def test_map_grows_on_map_full_and_shrinks_when_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tokshift.data import store
    from tokshift.data.store import ShardReader

    monkeypatch.setattr(store, "MIN_MAP_SIZE", 256 << 10)
    path = tmp_path / "grow.lmdb"
    data = _write(path, {f"v{i}": 20 for i in range(6)}, size=(96, 128), map_size=256 << 10)
    total = sum(len(f) for frames in data.values() for f in frames)
    assert total > 4 * (256 << 10)  # far beyond the first map size
    r = ShardReader(path)
    assert r.read_frames("v5", [19]) == [data["v5"][19]]
    r.close()
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, map_size=4096)  # takes the stored size
    assert 4 * (256 << 10) < env.info()["map_size"] <= path.stat().st_size + (5 << 20)  # only what exists
    env.close()


def test_duplicate_video_and_aborted_writer(tmp_path: Path) -> None:
    from tokshift.data.store import ShardWriter, partial_path

    path = tmp_path / "d.lmdb"
    with pytest.raises(ValueError, match="added twice"):
        with ShardWriter(path, ["a"]) as w:
            w.add_video("x", [b"1"], {})
            w.add_video("x", [b"1"], {})
    assert not path.exists() and not partial_path(path).exists()


def test_clear_errors_for_missing_partial_and_foreign_files(tmp_path: Path) -> None:
    from tokshift.data import store
    from tokshift.data.store import ShardCorruptError, ShardReader, seal_path

    with pytest.raises(FileNotFoundError, match="tokshift pack"):
        ShardReader(tmp_path / "none.lmdb").video_ids  # noqa: B018
    foreign = tmp_path / "foreign.lmdb"
    env = lmdb.open(str(foreign), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    env.close()
    with pytest.raises(ShardCorruptError, match=r"foreign\.lmdb.*seal foreign\.lmdb\.seal\.json is missing.*--force"):
        ShardReader(foreign).classes  # noqa: B018
    text = tmp_path / "text.lmdb"
    text.write_text("hello")
    seal_path(text).write_text(json.dumps({"format": store.FORMAT, "version": store.VERSION, "size": 5}))
    with pytest.raises(ShardCorruptError, match="text.lmdb is damaged: LMDB cannot open it"):
        ShardReader(text).classes  # noqa: B018


def test_two_readers_of_one_shard_share_the_environment(tmp_path: Path) -> None:
    from tokshift.data.store import ShardReader

    path = tmp_path / "s.lmdb"
    data = _write(path, {"a": 2})
    r1, r2 = ShardReader(path), ShardReader(path)
    assert r1.read_frames("a", [0]) == r2.read_frames("a", [0]) == [data["a"][0]]
    r1.close()
    assert r2.read_frames("a", [1]) == [data["a"][1]]


def _child_read(reader: ShardReader, queue: mp.Queue) -> None:
    queue.put((os.getpid(), reader.read_frames("v", [2])[0]))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_reader_pickles_and_reopens_in_child_processes(tmp_path: Path, method: str) -> None:
    from tokshift.data.store import ShardReader

    path = tmp_path / "s.lmdb"
    data = _write(path, {"v": 3})
    reader = ShardReader(path)
    assert reader.read_frames("v", [0]) == [data["v"][0]]  # opened in the parent before the child starts
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.read_frames("v", [1]) == [data["v"][1]]
    ctx = mp.get_context(method)
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_read, args=(reader, queue))
    proc.start()
    pid, frame = queue.get(timeout=60)
    proc.join(timeout=60)
    assert proc.exitcode == 0 and pid != os.getpid() and frame == data["v"][2]
    assert reader.read_frames("v", [2]) == [data["v"][2]]  # the parent's reader still works


# -- integrity ----------------------------------------------------------------------------------
_READ_ALL = """
import hashlib, json, sys
from tokshift.data.store import ShardCorruptError, ShardReader
out = {}
try:
    reader = ShardReader(sys.argv[1])
    for v in reader.videos():
        try:
            frames = reader.read_frames(v["video_id"], range(v["nframes"]))
            out[v["video_id"]] = [hashlib.sha1(f).hexdigest() for f in frames]
            reader.read_decoded(v["video_id"], range(v["nframes"]))
        except ShardCorruptError as err:
            out[v["video_id"]] = "corrupt: " + str(err)
except ShardCorruptError as err:
    out["<open>"] = "corrupt: " + str(err)
print(json.dumps(out))
"""


def _read_all_in_child(path: Path) -> dict[str, object]:
    """Read every frame in a fresh interpreter: a SIGBUS or segfault fails the test instead of pytest."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(
        [sys.executable, "-c", _READ_ALL, str(path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 0, f"reader died with {res.returncode}: {res.stderr[-2000:]}"
    return json.loads(res.stdout)


def _sha1s(frames: list[bytes]) -> list[str]:
    import hashlib

    return [hashlib.sha1(f).hexdigest() for f in frames]


def test_a_sealed_shard_records_its_size_and_contents(tmp_path: Path) -> None:
    from tokshift.data.store import ShardReader, seal_path

    path = tmp_path / "s.lmdb"
    _write(path, {"a": 3, "b": 2})
    seal = json.loads(seal_path(path).read_text())
    assert seal["size"] == path.stat().st_size and (seal["videos"], seal["frames"]) == (2, 5)
    assert ShardReader(path).verify() == 5 + 2  # frames, header, completion mark
    assert not list(tmp_path.glob("*.tmp"))


def test_overwritten_middle_of_a_shard_is_detected_and_named(tmp_path: Path) -> None:
    path = tmp_path / "shard-3.lmdb"
    data = _write(path, {f"v{i}": 20 for i in range(8)}, size=(96, 128))
    size = path.stat().st_size
    assert size > 1 << 20
    before = path.stat()
    with open(path, "r+b") as fh:  # 256 KB of garbage in the middle, same size, same mtime
        fh.seek(size // 2)
        fh.write(np.random.default_rng(1).integers(0, 256, 256 << 10, dtype=np.uint8).tobytes())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    got = _read_all_in_child(path)
    corrupt = {k: v for k, v in got.items() if isinstance(v, str)}
    assert corrupt, "no read noticed the damage"
    for msg in corrupt.values():
        assert msg.startswith("corrupt: ") and str(path) in msg and f"--force {path}" in msg
    for vid, hashes in got.items():  # whatever is still served is exactly what was packed
        if not isinstance(hashes, str):
            assert hashes == _sha1s(data[vid]), vid


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.0])
def test_truncated_shard_raises_instead_of_sigbus(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "shard-0.lmdb"
    _write(path, {f"v{i}": 10 for i in range(4)}, size=(96, 128))
    size = path.stat().st_size
    os.truncate(path, int(size * keep))
    got = _read_all_in_child(path)
    assert list(got) == ["<open>"]
    assert f"{path} is damaged: it is {int(size * keep)} bytes but was sealed at {size} bytes" in got["<open>"]


def test_unsealed_v1_shard_is_refused_with_how_to_repack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tokshift.data.store import ShardCorruptError, ShardReader, seal_path

    path = tmp_path / "frames" / "old.lmdb"
    _write(path, {"a": 2})
    seal_path(path).unlink()
    with pytest.raises(ShardCorruptError, match=r"format v1 .*re-pack it: .*snakemake --cores 1 --force .*old\.lmdb"):
        ShardReader(path).video_ids  # noqa: B018
    monkeypatch.chdir(tmp_path)  # snakemake wants the target relative to the pipeline's directory
    with pytest.raises(ShardCorruptError, match=r"`snakemake --cores 1 --force frames/old\.lmdb`"):
        ShardReader(path).video_ids  # noqa: B018


def test_a_flipped_byte_in_a_frame_fails_its_checksum(tmp_path: Path) -> None:
    from tokshift.data.store import ShardCorruptError, ShardReader

    path = tmp_path / "s.lmdb"
    data = _write(path, {"a": 3})
    blob = bytearray(path.read_bytes())
    needle = data["a"][1][-60:-20]  # entropy-coded data of frame 1 only (copy-on-write leaves stale copies)
    at = blob.find(needle)
    while at >= 0:
        blob[at] ^= 0x01
        at = blob.find(needle, at + 1)
    path.write_bytes(bytes(blob))
    reader = ShardReader(path)
    assert reader.read_frames("a", [0, 2]) == [data["a"][0], data["a"][2]]
    with pytest.raises(ShardCorruptError, match=r"checksum of frame 1 of video 'a' does not match"):
        reader.read_decoded("a", [1])
    with pytest.raises(ShardCorruptError, match="s.lmdb is damaged"):
        reader.verify()
