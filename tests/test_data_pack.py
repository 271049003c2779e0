"""Packing real videos: frame counts, pixels, rotation, VFR order, bad input, hangs, kill-and-rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tests.data_helpers import (
    audio_only,
    corrupt_file,
    encode,
    frame_code,
    numbered_frames,
    psnr,
    reference_decode,
    rotate_metadata,
    truncated_copy,
    vfr_video,
    write_csv,
)
from tokshift.data.decode import VideoDecodeError, decode_video, ffmpeg_decode_command
from tokshift.data.ffmpeg import ffmpeg_executable
from tokshift.data.sources import build_index, read_index, write_index
from tokshift.errors import ExitCode

GOOD = {
    "land scape ü.mp4": "landscape",
    "portrait.mp4": "portrait",
    "rotated.mp4": "portrait",
    "short.mp4": "landscape",
    "single.mp4": "landscape",
    "vfr.mp4": "landscape",
    "vidéo 日本.mp4": "landscape",
}
BAD = {
    "corrupt.mp4": "corrupt",
    "zero.mp4": "empty file",
    "audio only.m4a": "no video stream",
    "truncated.mp4": "truncated",
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("videos")
    land = encode(numbered_frames(20, 48, 64, seed=1), d / "land scape ü.mp4")
    encode(numbered_frames(15, 64, 48, seed=2), d / "portrait.mp4")
    rotate_metadata(land, d / "rotated.mp4", 90)
    encode(numbered_frames(3, 48, 64, seed=4), d / "short.mp4")
    encode(numbered_frames(1, 48, 64, seed=5), d / "single.mp4", extra=["-frames:v", "1"])
    vfr_video(d / "vfr.mp4")
    encode(numbered_frames(9, 40, 72, seed=6), d / "vidéo 日本.mp4", codec="mpeg4", extra=["-q:v", "3"])
    corrupt_file(d / "corrupt.mp4")
    (d / "zero.mp4").write_bytes(b"")
    audio_only(d / "audio only.m4a")
    truncated_copy(land, d / "truncated.mp4")
    rows = [(name, label) for name, label in GOOD.items()] + [(name, "landscape") for name in BAD]
    rows.append(("not there.mp4", "landscape"))
    write_csv(d / "all.csv", rows)
    return d


@pytest.fixture(scope="module")
def packed(videos: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from tokshift.data.pack import pack_shard

    out = tmp_path_factory.mktemp("packed")
    index = out / "train.csv"
    result = build_index({"kind": "csv", "splits": {"train": str(videos / "all.csv")}}, "train", 1)
    write_index(result, index)
    shard = out / "shard-0.lmdb"
    failures = out / "shard-0.failures.csv"
    pack_shard(index, 0, shard, failures, short_side=32, jpeg_quality=90, workers=2, progress=False)
    return index, shard, failures


def test_listing_names_every_packed_video_with_what_the_reader_returns(
    packed: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    from tokshift.data.pack import read_listing
    from tokshift.data.store import ShardReader

    index, shard, _ = packed
    reader = ShardReader(shard)
    listing = list(read_listing(shard.with_suffix(".videos.csv")))
    assert [r["video_id"] for r in listing] == reader.video_ids and len(listing) == len(GOOD)
    for row in listing:
        meta = reader.meta(row["video_id"])
        n = int(row["frames"])
        assert n == meta["nframes"] == len(reader.read_frames(row["video_id"], range(n))) > 0
        assert (int(row["width"]), int(row["height"])) == (meta["width"], meta["height"])
        assert int(row["bytes"]) == sum(len(f) for f in reader.read_frames(row["video_id"], range(n)))
        assert row["label"] == meta["label"] and float(row["fps"]) == meta["fps"]
    # The split's summary totals the listings (it never opens the shards' headers).
    from tokshift.data.summary import summarize_split

    frames = sum(int(r["frames"]) for r in listing)
    assert summarize_split(index, [shard])["total_frames"] == frames
    copy = tmp_path / shard.name
    copy.write_bytes(b"")  # a shard file whose header cannot be read
    copy.with_suffix(".videos.csv").write_text(shard.with_suffix(".videos.csv").read_text())
    summary = summarize_split(index, [copy])
    assert (summary["packed"], summary["total_frames"]) == (len(GOOD), frames)


def test_missing_video_is_listed_not_fatal(packed: tuple[Path, Path, Path]) -> None:
    index, _, _ = packed
    missing = index.with_name("train.missing.csv").read_text(encoding="utf-8")
    assert "not there.mp4" in missing and "file not found" in missing
    assert len(read_index(index)) == len(GOOD) + len(BAD)


def test_every_bad_file_is_listed_with_its_reason(packed: tuple[Path, Path, Path]) -> None:
    from tokshift.data.pack import read_failures
    from tokshift.data.store import ShardReader

    _, shard, failures = packed
    rows = {Path(r["path"]).name: r["reason"] for r in read_failures(failures)}
    assert set(rows) == set(BAD)
    for name, reason in BAD.items():
        assert reason in rows[name], (name, rows[name])
    assert not set(BAD) & set(ShardReader(shard).video_ids)


def test_frame_counts_and_pixels_match_direct_ffmpeg_decode(videos: Path, packed: tuple[Path, Path, Path]) -> None:
    from tokshift.data.jpeg import decode_rgb
    from tokshift.data.store import ShardReader

    _, shard, _ = packed
    reader = ShardReader(shard)
    assert sorted(reader.video_ids) == sorted(GOOD)
    for vid in reader.video_ids:
        meta = reader.meta(vid)
        assert min(meta["width"], meta["height"]) == 32, (vid, meta)
        ref = reference_decode(videos / vid, meta["width"], meta["height"])
        assert meta["nframes"] == len(ref) > 0, vid
        got = np.stack([decode_rgb(b) for b in reader.read_frames(vid, range(meta["nframes"]))])
        assert got.shape == ref.shape
        assert psnr(got, ref) >= 30, (vid, psnr(got, ref))
    assert reader.meta("single.mp4")["nframes"] == 1
    assert reader.meta("short.mp4")["nframes"] == 3
    assert reader.meta("land scape ü.mp4")["fps"] == pytest.approx(10.0)
    assert reader.meta("portrait.mp4")["label"] == "portrait"
    assert reader.classes == ["landscape", "portrait"]


def test_rotated_phone_video_comes_out_upright(packed: tuple[Path, Path, Path]) -> None:
    from tokshift.data.jpeg import decode_rgb
    from tokshift.data.store import ShardReader

    reader = ShardReader(packed[1])
    rot, land = reader.meta("rotated.mp4"), reader.meta("land scape ü.mp4")
    assert (land["width"], land["height"]) == (43, 32)  # 64x48 landscape at short side 32 (rounded)
    assert (rot["width"], rot["height"]) == (32, 43)
    a = decode_rgb(reader.read_frames("rotated.mp4", [0])[0])
    b = decode_rgb(reader.read_frames("land scape ü.mp4", [0])[0])
    assert psnr(a, np.rot90(b)) > 30  # the display matrix turned the picture, not just the size
    assert psnr(a, np.rot90(b, -1)) < 25


def test_vfr_video_keeps_every_frame_in_decode_order(packed: tuple[Path, Path, Path]) -> None:
    from tokshift.data.jpeg import decode_rgb
    from tokshift.data.store import ShardReader

    reader = ShardReader(packed[1])
    n = reader.meta("vfr.mp4")["nframes"]
    assert n == 12
    codes = [frame_code(decode_rgb(b)) for b in reader.read_frames("vfr.mp4", range(n))]
    expected = [(t * 37) % 256 for t in range(n)]
    assert all(abs(c - e) <= 6 for c, e in zip(codes, expected)), codes


def test_no_lock_or_partial_file_left(packed: tuple[Path, Path, Path]) -> None:
    from tokshift.data.store import partial_path

    _, shard, _ = packed
    assert shard.is_file()
    assert not partial_path(shard).exists()
    assert not Path(str(shard) + "-lock").exists()
    assert sorted(p.name for p in shard.parent.iterdir()) == [
        "shard-0.failures.csv",
        "shard-0.lmdb",
        "shard-0.lmdb.seal.json",
        "shard-0.videos.csv",
        "train.classes.txt",
        "train.csv",
        "train.missing.csv",
    ]


def test_decode_video_returns_all_frames_and_clear_errors(videos: Path) -> None:
    frames, fps = decode_video(videos / "portrait.mp4", short_side=None)
    assert frames.shape == (15, 64, 48, 3) and frames.dtype == np.uint8 and fps == pytest.approx(10)
    with pytest.raises(VideoDecodeError, match="no video stream") as info:
        decode_video(videos / "audio only.m4a")
    assert "audio only.m4a" in str(info.value)
    with pytest.raises(VideoDecodeError, match="file not found"):
        decode_video(videos / "nope.mp4")


def _simple_filter_decode(path: Path, short_side: int | None, pixel_format: str) -> bytes:
    """Decode with a hand-written single-chain ``-vf`` command, the plainest spelling of the decode."""
    chain = [f"scale=w='if(gte(iw,ih),-1,{short_side})':h='if(gte(iw,ih),{short_side},-1)'"] if short_side else []
    if pixel_format == "yuv420":
        chain.append("scale=out_range=full:out_color_matrix=bt601,format=yuvj420p")
        out = ["-f", "yuv4mpegpipe", "-strict", "-1", "-"]
    else:
        out = ["-f", "image2pipe", "-c:v", "ppm", "-"]
    cmd = [ffmpeg_executable(), "-nostdin", "-loglevel", "error", "-threads", "1", "-i", str(path), "-map", "0:v:0"]
    cmd += ["-fps_mode", "passthrough", *(["-vf", ",".join(chain)] if chain else []), *out]
    return subprocess.run(cmd, capture_output=True, check=True, stdin=subprocess.DEVNULL).stdout


@pytest.mark.parametrize("pixel_format", ["rgb", "yuv420"])
def test_graph_built_decode_command_emits_the_same_bytes_as_a_plain_filter_chain(
    videos: Path, pixel_format: str
) -> None:
    for name in ("rotated.mp4", "vfr.mp4", "vidéo 日本.mp4"):
        for short_side in (None, 32, 37):
            cmd = ffmpeg_decode_command(videos / name, short_side, pixel_format=pixel_format)
            assert cmd[0] == ffmpeg_executable()
            got = subprocess.run(cmd, capture_output=True, check=True, stdin=subprocess.DEVNULL).stdout
            want = _simple_filter_decode(videos / name, short_side, pixel_format)
            assert len(want) > 1000 and got == want, (name, short_side)
    with pytest.raises(ValueError, match="pixel_format must be"):
        ffmpeg_decode_command(videos / "short.mp4", None, pixel_format="gray")


def test_hanging_ffmpeg_is_killed_and_the_shard_completes(videos: Path, tmp_path: Path) -> None:
    from tokshift.data.pack import pack_shard, read_failures
    from tokshift.data.store import ShardReader

    fifo = tmp_path / "hang.mp4"
    os.mkfifo(fifo)  # opening it blocks ffmpeg forever: a stand-in for a decoder that hangs
    csv_path = write_csv(tmp_path / "hang.csv", [(str(fifo), "a"), (str(videos / "short.mp4"), "b")])
    index = tmp_path / "train.csv"
    write_index(build_index({"kind": "csv", "splits": {"train": str(csv_path)}}, "train", 1), index)
    t0 = time.monotonic()
    result = pack_shard(
        index,
        0,
        tmp_path / "s.lmdb",
        tmp_path / "s.failures.csv",
        short_side=32,
        timeout=5,  # the FIFO hangs forever; the real clip decodes in well under a second even on a busy machine
        workers=2,
        progress=False,
    )
    assert time.monotonic() - t0 < 30
    assert result.packed == 1
    (failure,) = read_failures(tmp_path / "s.failures.csv")
    assert failure["path"] == str(fifo) and "killed" in failure["reason"]
    assert ShardReader(tmp_path / "s.lmdb").video_ids == [str(videos / "short.mp4")]


def test_empty_shard_is_a_valid_empty_file(packed: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from tokshift.data.pack import pack_shard
    from tokshift.data.store import ShardReader

    index, _, _ = packed
    out = tmp_path / "shard-5.lmdb"
    result = pack_shard(index, 5, out, progress=False)
    assert result.videos == 0
    reader = ShardReader(out)
    assert len(reader) == 0 and reader.classes == ["landscape", "portrait"]
    assert (tmp_path / "shard-5.failures.csv").read_text().strip() == "video_id,path,label,reason"
    assert not Path(str(out) + "-lock").exists()


KILLABLE = textwrap.dedent("""
    import sys
    from tokshift.data.pack import pack_shard
    pack_shard(sys.argv[1], 0, sys.argv[2], sys.argv[3], short_side=48, workers=1, progress=False)
""")


def test_killed_shard_job_rerun_gives_identical_content(tmp_path: Path) -> None:
    from tokshift.data.pack import pack_shard
    from tokshift.data.store import ShardReader, partial_path

    rows = []
    for i in range(10):
        p = encode(numbered_frames(60, 72, 96, seed=10 + i), tmp_path / f"v{i}.mp4")
        rows.append((p.name, f"c{i % 3}"))
    index = tmp_path / "train.csv"
    write_index(
        build_index({"kind": "csv", "splits": {"train": str(write_csv(tmp_path / "v.csv", rows))}}, "train", 1), index
    )
    reference = tmp_path / "ref.lmdb"
    pack_shard(index, 0, reference, short_side=48, workers=1, progress=False)

    out, failures = tmp_path / "out" / "shard-0.lmdb", tmp_path / "out" / "shard-0.failures.csv"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(index), str(out), str(failures)], env=env)
    partial = partial_path(out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (partial.exists() and partial.stat().st_size > 64 * 1024):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial.exists() and not out.exists(), "the job was not killed midway"
    with pytest.raises(FileNotFoundError, match="did not finish"):
        ShardReader(out).video_ids  # noqa: B018

    pack_shard(index, 0, out, failures, short_side=48, workers=2, progress=False)
    assert not partial.exists()
    assert list(ShardReader(out).items()) == list(ShardReader(reference).items())
    assert len(ShardReader(out)) == 10


@pytest.fixture
def small_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real 1 MB filesystem (tmpfs) to fill up; skipped where mounting is not allowed."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}); needs root")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)  # detach even if something still holds it


def test_full_disk_is_reported_with_path_free_space_and_a_rerun_rebuilds(small_tmpfs: Path, tmp_path: Path) -> None:
    from tokshift.data.pack import pack_shard
    from tokshift.data.store import ShardReader, partial_path

    rng = np.random.default_rng(3)
    rows = []
    for i in range(6):  # noise compresses badly: ~0.6 MB of JPEG per video
        frames = rng.integers(0, 256, (30, 96, 128, 3), dtype=np.uint8)
        rows.append((encode(frames, tmp_path / f"n{i}.mp4", extra=["-crf", "0"]).name, "noise"))
    index = tmp_path / "train.csv"
    write_index(
        build_index({"kind": "csv", "splits": {"train": str(write_csv(tmp_path / "v.csv", rows))}}, "train", 1), index
    )
    out = small_tmpfs / "frames" / "shard-0.lmdb"
    cmd = [sys.executable, "-m", "tokshift.cli", "pack", "--index", str(index), "--shard", "0", "--out", str(out)]
    cmd += ["--short-side", "0", "--jpeg-quality", "95", "--workers", "1", "--progress", "off"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == ExitCode.RETRY_LATER, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    msg = res.stderr.strip().splitlines()[-1]
    assert msg.startswith(f"tokshift pack: error: disk full while packing {out}: ")
    assert "MB free of 1.0 MB" in msg and "of 6 videos, so it needs roughly" in msg and "MB more" in msg
    assert "rerun the same command" in msg
    assert not out.exists() and not partial_path(out).exists()  # the partial shard is cleaned up

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_tmpfs)], check=True)
    result = pack_shard(index, 0, out, short_side=None, jpeg_quality=95, workers=1, progress=False)
    reader = ShardReader(out)
    assert result.packed == 6 and reader.verify() == result.frames + 2
    reader.close()  # lets the tmpfs unmount
    needed = float(msg.split("needs roughly ")[1].split(" MB")[0]) * 1e6
    assert 0.5 * out.stat().st_size < needed < 2 * out.stat().st_size  # the estimate is in the right ballpark
