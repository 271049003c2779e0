"""The generated demo dataset, the ffmpeg lookup, and the data CLI from demo videos to a summary."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tokshift.data.commands import register
from tokshift.data.decode import decode_video
from tokshift.data.demo import CLASSES, DemoConfig, generate_demo, render_clip

SMALL = DemoConfig(seed=3, train_per_class=6, val_per_class=2, frames=24, size=64)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    generate_demo(out, SMALL, progress=False)
    return out


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_demo_layout_and_csvs(demo: Path) -> None:
    train = (demo / "train.csv").read_text().splitlines()
    val = (demo / "val.csv").read_text().splitlines()
    assert train[0] == val[0] == "path,label"
    assert len(train) == 1 + 6 * len(CLASSES) and len(val) == 1 + 2 * len(CLASSES)
    labels = {line.split(",")[1] for line in train[1:]}
    assert labels == set(CLASSES) == {"brighten", "darken", "disc_grow", "disc_shrink"}
    for line in train[1:] + val[1:]:
        rel = line.split(",")[0]
        assert not rel.startswith("/") and (demo / rel).stat().st_size > 0


def test_demo_is_byte_identical_on_rerun_and_seed_dependent(demo: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_demo(again, SMALL, workers=1, progress=False)
    files = sorted(p.relative_to(demo) for p in demo.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((demo / f).read_bytes() == (again / f).read_bytes() for f in files)
    other = tmp_path / "other"
    generate_demo(other, DemoConfig(seed=4, train_per_class=1, val_per_class=1), progress=False)
    assert (other / "videos/train/brighten_0000.mp4").read_bytes() != (
        demo / "videos/train/brighten_0000.mp4"
    ).read_bytes()


def test_demo_classes_differ_only_in_the_direction_of_time(demo: Path) -> None:
    trends: dict[str, list[float]] = {c: [] for c in CLASSES}
    for label in CLASSES:
        for i in range(6):
            frames, fps = decode_video(demo / f"videos/train/{label}_{i:04d}.mp4")
            assert frames.shape == (24, 64, 64, 3) and fps == pytest.approx(8)
            if label.startswith("disc"):  # disc area: pixels far from the frame's median colour
                signal = np.abs(frames.astype(int) - np.median(frames, axis=(1, 2), keepdims=True)).sum(-1) > 60
                series = signal.mean(axis=(1, 2))
            else:
                series = frames.mean(axis=(1, 2, 3))
            trends[label].append(float(np.corrcoef(np.arange(24), series)[0, 1]))
    assert min(trends["brighten"]) > 0.9 and max(trends["darken"]) < -0.9
    assert min(trends["disc_grow"]) > 0.9 and max(trends["disc_shrink"]) < -0.9
    # With the same random draws, a "down" clip is the "up" clip played backwards: the pair
    # differs only in the direction of time, so per-frame features cannot tell them apart.
    for up, down in (("brighten", "darken"), ("disc_grow", "disc_shrink")):
        for seed in range(5):
            a = render_clip(up, np.random.default_rng(seed)).astype(float)
            b = render_clip(down, np.random.default_rng(seed)).astype(float)
            assert np.abs(a[::-1].mean(axis=(1, 2, 3)) - b.mean(axis=(1, 2, 3))).max() < 0.5
            assert np.abs(a[::-1] - b).mean() < 8  # equal up to per-pixel noise
            assert np.abs(a - b).mean() > 10


def test_data_cli_from_demo_to_summary(demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tokshift.data.store import ShardReader

    res = tmp_path / "results"
    spec = json.dumps({"kind": "demo", "root": str(demo)})
    assert (
        cli("index", "--spec-json", spec, "--split", "train", "--shards", "2", "--out", str(res / "index/train.csv"))
        == 0
    )
    # the validation split as a csv dataset with one broken and one missing video added
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    rows = (demo / "val.csv").read_text().splitlines()[1:]
    val_csv = tmp_path / "val.csv"
    val_csv.write_text(
        "path,label\n"
        + "".join(f"{demo / r.split(',')[0]},{r.split(',')[1]}\n" for r in rows)
        + "broken.mp4,darken\ngone.mp4,darken\n"
    )
    spec = json.dumps({"kind": "csv", "splits": {"val": str(val_csv)}})
    assert (
        cli("index", "--spec-json", spec, "--split", "val", "--shards", "2", "--out", str(res / "index/val.csv")) == 0
    )
    for k in range(2):
        assert (
            cli(
                "pack",
                "--index",
                str(res / "index/val.csv"),
                "--shard",
                str(k),
                "--short-side",
                "48",
                "--out",
                str(res / f"frames/val/shard-{k}.lmdb"),
                "--workers",
                "2",
                "--progress",
                "off",
            )
            == 0
        )
    summary_path = res / "frames/val/summary.json"
    assert (
        cli(
            "summarize",
            "--index",
            str(res / "index/val.csv"),
            "--shards-dir",
            str(res / "frames/val"),
            "--out",
            str(summary_path),
        )
        == 0
    )
    summary = json.loads(summary_path.read_text())
    assert summary["split"] == "val" and summary["videos_in_annotation"] == 10
    assert (summary["packed"], summary["missing"], summary["failed"]) == (8, 1, 1)
    assert summary["missing_videos"] == ["gone.mp4"]
    (failed,) = summary["failed_videos"]
    assert failed["video_id"] == "broken.mp4" and "corrupt" in failed["reason"]
    assert summary["failure_reasons"] == {failed["reason"]: 1}
    assert summary["total_frames"] == 8 * 24 and summary["frame_bytes"] > 0 and summary["shard_file_bytes"] > 0
    assert summary["shards"] == 2 and summary["not_packed_yet"] == 0
    reader = ShardReader(res / "frames/val/shard-0.lmdb")
    assert reader.classes == sorted(CLASSES)
    assert reader.attrs["short_side"] == 48 and all(reader.meta(v)["height"] == 48 for v in reader.video_ids)
    assert ShardReader(res / "frames/val/shard-1.lmdb").classes == sorted(CLASSES)
    # A dataset root without its CSVs is bad input, named with the command that makes them.
    from tokshift.cli import main

    missing = ["--spec-json", json.dumps({"kind": "demo", "root": str(tmp_path / "x")}), "--split", "val"]
    assert main(["index", *missing, "--out", str(tmp_path / "x.csv")]) == 2
    assert "tokshift index: error: demo dataset:" in capsys.readouterr().err


def test_ffmpeg_lookup_order(tmp_path: Path) -> None:
    code = "from tokshift.data.ffmpeg import ffmpeg_executable as f; print(f())"
    root = str(Path(__file__).resolve().parents[1])
    base = {**os.environ, "PYTHONPATH": root}
    base.pop("TOKSHIFT_FFMPEG", None)
    fake_dir = tmp_path / "bin"
    fake_dir.mkdir()
    fake = fake_dir / "ffmpeg"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    run = lambda env: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)  # noqa: E731
    assert run({**base, "PATH": str(fake_dir)}).stdout.strip() == str(fake)  # PATH first
    empty = tmp_path / "empty"
    empty.mkdir()
    fallback = run({**base, "PATH": str(empty)}).stdout.strip()
    assert "imageio_ffmpeg" in fallback and os.access(fallback, os.X_OK)  # then the pip binary
    bad = run({**base, "TOKSHIFT_FFMPEG": str(tmp_path / "missing")})
    assert bad.returncode != 0 and "TOKSHIFT_FFMPEG" in bad.stderr


def test_demo_encode_matches_a_plain_ffmpeg_command(tmp_path: Path) -> None:
    from tokshift.data.demo import encode_h264
    from tokshift.data.ffmpeg import ffmpeg_executable

    clip = render_clip("disc_grow", np.random.default_rng(7), frames=12, size=48)
    encode_h264(clip, tmp_path / "graph.mp4", fps=6, crf=24)
    plain = [ffmpeg_executable(), "-nostdin", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24"]
    plain += ["-s", "48x48", "-r", "6", "-i", "-", "-c:v", "libx264", "-preset", "veryfast", "-crf", "24"]
    plain += ["-pix_fmt", "yuv420p", "-threads", "1", "-x264-params", "threads=1:sliced-threads=0"]
    plain += ["-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1", str(tmp_path / "plain.mp4")]
    subprocess.run(plain, input=clip.tobytes(), check=True, capture_output=True)
    assert (tmp_path / "graph.mp4").read_bytes() == (tmp_path / "plain.mp4").read_bytes()
    assert not list(tmp_path.glob("*.tmp*"))
