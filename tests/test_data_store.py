"""The LMDB frame store: round trip, map growth, lazy lock-free readers across fork/spawn and pickling."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
from pathlib import Path

import lmdb
import numpy as np
import pytest

from tokshift.data import store
from tokshift.data.jpeg import decode_rgb, encode_rgb
from tokshift.data.store import ShardReader, ShardWriter, partial_path


def _write(path: Path, videos: dict[str, int], size: tuple[int, int] = (24, 32), **kw) -> dict[str, list[bytes]]:
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
    path = tmp_path / "d.lmdb"
    with pytest.raises(ValueError, match="added twice"):
        with ShardWriter(path, ["a"]) as w:
            w.add_video("x", [b"1"], {})
            w.add_video("x", [b"1"], {})
    assert not path.exists() and not partial_path(path).exists()


def test_clear_errors_for_missing_partial_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokshift pack"):
        ShardReader(tmp_path / "none.lmdb").video_ids  # noqa: B018
    foreign = tmp_path / "foreign.lmdb"
    env = lmdb.open(str(foreign), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    env.close()
    with pytest.raises(ValueError, match="no tokshift header"):
        ShardReader(foreign).classes  # noqa: B018
    text = tmp_path / "text.lmdb"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a readable LMDB frame shard"):
        ShardReader(text).classes  # noqa: B018


def test_two_readers_of_one_shard_share_the_environment(tmp_path: Path) -> None:
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
