"""Damaged frame shards stop `tokshift evaluate` and `tokshift train` with the shard named.

A damaged shard is never scored as a few "failed videos" and never a SIGBUS: the job exits
with DATA_DAMAGED and says which file to re-pack.

A shard damaged only inside a frame's bytes (same size, intact LMDB pages) is read in this
process; a shard whose LMDB structure may be damaged is read by a real process, so that a
crash would fail the test and not the test session.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

from tests.engine_helpers import PackedDemo, TrainedDemo, run_cli, run_cli_inprocess, train_args
from tokshift.errors import ExitCode


def _copy_shard(src: Path, dest: Path) -> Path:
    from tokshift.data.store import seal_path

    shutil.copy2(src, dest)
    shutil.copy2(seal_path(src), seal_path(dest))
    return dest


def _evaluate(trained: TrainedDemo, shard: Path, out: Path, in_process: bool = False):  # type: ignore[no-untyped-def]
    return (run_cli_inprocess if in_process else run_cli)(
        "evaluate",
        "--checkpoint",
        str(trained.checkpoint),
        "--shards",
        str(shard),
        "--out-dir",
        str(out),
        "--workers",
        "1",
        threads=2,
    )


def _assert_stopped_on(res, shard: Path, out: Path) -> None:  # type: ignore[no-untyped-def]
    assert res.returncode not in (0, -signal.SIGBUS, 128 + signal.SIGBUS), res.stderr[-3000:]
    assert f"frame shard {shard} is damaged" in res.stderr, res.stderr[-3000:]
    assert "re-pack it" in res.stderr
    assert not (out / "metrics.json").exists()  # nothing is scored on a damaged shard


def test_evaluate_stops_on_a_frame_that_fails_its_checksum(
    trained_demo: TrainedDemo, packed_demo: PackedDemo, tmp_path: Path
) -> None:
    from tokshift.data.store import ShardReader

    shard = _copy_shard(packed_demo.val, tmp_path / "val.lmdb")
    reader = ShardReader(packed_demo.val)
    vid = reader.video_ids[5]
    frame = reader.read_frames(vid, [reader.meta(vid)["nframes"] // 2])[0]
    reader.close()
    blob = bytearray(shard.read_bytes())
    needle = frame[-60:-20]  # entropy-coded bytes of one frame of one video (and its stale copies)
    at = blob.find(needle)
    assert at >= 0
    while at >= 0:
        blob[at] ^= 0x40
        at = blob.find(needle, at + 1)
    shard.write_bytes(bytes(blob))  # same size: the seal's size check passes, the CRC must catch it
    res = _evaluate(trained_demo, shard, tmp_path / "out", in_process=True)
    _assert_stopped_on(res, shard, tmp_path / "out")
    assert f"video {vid!r}" in res.stderr


def test_train_stops_on_frames_that_fail_their_checksum(packed_demo: PackedDemo, tmp_path: Path) -> None:
    from tokshift.data.store import ShardReader

    train = _copy_shard(packed_demo.train, tmp_path / "train.lmdb")
    reader = ShardReader(packed_demo.train)
    blob = bytearray(train.read_bytes())
    for vid in reader.video_ids[::3]:  # damage a frame of every third video: the first batch meets one
        for k in range(reader.meta(vid)["nframes"]):
            needle = reader.read_frames(vid, [k])[0][-60:-20]
            at = blob.find(needle)
            while at >= 0:
                blob[at] ^= 0x40
                at = blob.find(needle, at + 1)
    reader.close()
    train.write_bytes(bytes(blob))
    data = PackedDemo(**{**packed_demo.__dict__, "train": train})
    res = run_cli_inprocess(*train_args(data, tmp_path / "run", overrides=("epochs=1",)), threads=2)
    assert res.returncode == ExitCode.DATA_DAMAGED, res.stderr[-3000:]
    assert f"frame shard {train} is damaged: the checksum of frame" in res.stderr
    assert not (tmp_path / "run" / "model.pt").exists()


def test_evaluate_stops_on_an_overwritten_middle_of_the_shard(
    trained_demo: TrainedDemo, packed_demo: PackedDemo, tmp_path: Path
) -> None:
    import numpy as np

    shard = _copy_shard(packed_demo.val, tmp_path / "val.lmdb")
    size = shard.stat().st_size
    span = min(256 << 10, size // 4)
    with open(shard, "r+b") as fh:
        fh.seek(size // 2 - span // 2)
        fh.write(np.random.default_rng(0).integers(0, 256, span, dtype=np.uint8).tobytes())
    res = _evaluate(trained_demo, shard, tmp_path / "out")
    _assert_stopped_on(res, shard, tmp_path / "out")


def test_evaluate_and_train_refuse_a_truncated_shard_without_sigbus(
    trained_demo: TrainedDemo, packed_demo: PackedDemo, tmp_path: Path
) -> None:
    shard = _copy_shard(packed_demo.val, tmp_path / "val.lmdb")
    with open(shard, "r+b") as fh:
        fh.truncate(shard.stat().st_size // 2)
    res = _evaluate(trained_demo, shard, tmp_path / "out")
    _assert_stopped_on(res, shard, tmp_path / "out")
    assert res.returncode == ExitCode.DATA_DAMAGED and "truncated" in res.stderr

    train = _copy_shard(packed_demo.train, tmp_path / "train.lmdb")
    with open(train, "r+b") as fh:
        fh.truncate(train.stat().st_size - 4096)
    data = PackedDemo(**{**packed_demo.__dict__, "train": train})
    res = run_cli(*train_args(data, tmp_path / "run"), threads=2)
    assert res.returncode == ExitCode.DATA_DAMAGED, res.stderr[-3000:]
    assert f"frame shard {train} is damaged" in res.stderr and "truncated" in res.stderr
