"""Dataset sources: a miniature Kinetics tree, CSV datasets, original frame folders, stable shards."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from tests.data_helpers import encode, numbered_frames, write_csv
from tokshift.cli import main
from tokshift.data.commands import register
from tokshift.data.sources import (
    DatasetSpecError,
    build_index,
    classes_path,
    missing_path,
    read_classes,
    read_index,
    shard_of,
    write_index,
)
from tokshift.errors import ExitCode

KINETICS_TRAIN = [
    # label, youtube_id, time_start, time_end, split, is_cc
    ("abseiling", "-3B32lodo2M", 59, 69, "train", 0),
    ("abseiling", "--07WQ2iBlw", 1, 11, "train", 0),
    ("passing American football (in game)", "0aWUi84SXf0", 12, 22, "train", 0),
    ("passing American football (in game)", "MISSING0001", 30, 40, "train", 0),
    ("zumba", "zz_Top-1234", 105, 115, "train", 1),
    ("zumba", "MISSING0002", 0, 10, "train", 0),
]
KINETICS_VAL = [
    ("abseiling", "v_absei_001", 3, 13, "val"),
    ("playing bagpipes", "v_bagpip_01", 0, 10, "val"),
    ("zumba", "MISSING0003", 20, 30, "val"),
]


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("k400")
    ann = root / "annotations"
    ann.mkdir()
    with open(ann / "train.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split", "is_cc"])
        w.writerows(KINETICS_TRAIN)
    with open(ann / "validate.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        w.writerows(KINETICS_VAL)
    clip = numbered_frames(4, 48, 64)
    for i, (label, yid, start, end, *_rest) in enumerate(KINETICS_TRAIN + KINETICS_VAL):
        if yid.startswith("MISSING"):
            continue
        split_dir = "train" if i < len(KINETICS_TRAIN) else "val"
        folder = root / split_dir / label if i % 2 == 0 else root / split_dir  # per-class folders and flat
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{yid}.mkv" if yid == "v_bagpip_01" else f"{yid}_{start:06d}_{end:06d}.mp4"  # id-only copies too
        encode(clip, folder / name)
    (root / "train" / "README.txt").write_text("not a video")
    return {
        "kind": "kinetics",
        "root": str(root),
        "annotations": {"train": str(ann / "train.csv"), "validate": str(ann / "validate.csv")},
    }


def test_kinetics_labels_indices_and_missing(kinetics: dict) -> None:
    train = build_index(kinetics, "train", 4)
    expected_classes = sorted({r[0] for r in KINETICS_TRAIN + KINETICS_VAL})
    assert train.classes == expected_classes  # over both splits, alphabetically
    assert {r.video_id for r in train.rows} == {
        "-3B32lodo2M_000059_000069",
        "--07WQ2iBlw_000001_000011",
        "0aWUi84SXf0_000012_000022",
        "zz_Top-1234_000105_000115",
    }
    by_id = {r.video_id: r for r in train.rows}
    football = by_id["0aWUi84SXf0_000012_000022"]
    assert football.label == "passing American football (in game)"
    assert football.label_index == expected_classes.index(football.label) == 1
    assert by_id["zz_Top-1234_000105_000115"].label_index == 3
    assert Path(football.path).is_file() and Path(football.path).is_absolute()
    assert {m.video_id for m in train.missing} == {"MISSING0001_000030_000040", "MISSING0002_000000_000010"}
    assert all(r.shard == shard_of(r.video_id, 4) for r in train.rows)

    val = build_index(kinetics, "val", 4)  # the 'validate' file and split value 'val'
    assert val.classes == train.classes
    assert [r.label for r in val.rows] == ["abseiling", "playing bagpipes"]
    assert val.rows[1].video_id == "v_bagpip_01_000000_000010" and val.rows[1].path.endswith("v_bagpip_01.mkv")
    assert [m.video_id for m in val.missing] == ["MISSING0003_000020_000030"]


def test_kinetics_index_files_through_the_cli(kinetics: dict, tmp_path: Path) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out = tmp_path / "index" / "train.csv"
    args = parser.parse_args(
        ["index", "--spec-json", json.dumps(kinetics), "--split", "train", "--shards", "3", "--out", str(out)]
    )
    assert args.func(args) == 0
    rows = read_index(out)
    assert len(rows) == 4 and {r.split for r in rows} == {"train"}
    with open(out, newline="") as fh:
        assert next(csv.reader(fh)) == ["video_id", "path", "label", "label_index", "split", "shard", "nframes"]
    missing = missing_path(out).read_text().splitlines()
    assert missing[0] == "video_id,path,label,split,reason" and len(missing) == 3
    assert read_classes(out)[1] == "passing American football (in game)"
    assert classes_path(out).read_text().count("\n") == 4


def test_kinetics_config_file_path(kinetics: dict, tmp_path: Path) -> None:
    import argparse

    import yaml

    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"dataset": "k", "datasets": {"k": kinetics}, "frames": {"shards": 5}}))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out = tmp_path / "val.csv"
    args = parser.parse_args(["index", "--config", str(cfg), "--split", "val", "--out", str(out)])
    assert args.func(args) == 0
    assert {r.shard for r in read_index(out)} <= set(range(5))


def test_shard_assignment_is_stable_and_spread() -> None:
    ids = [f"video_{i:05d}" for i in range(2000)]
    shards = [shard_of(v, 8) for v in ids]
    assert shards == [shard_of(v, 8) for v in ids]
    # pinned to SHA-1 (first 8 bytes, big-endian): independent of PYTHONHASHSEED and platform
    assert shard_of("abc", 8) == int.from_bytes(hashlib.sha1(b"abc").digest()[:8], "big") % 8 == 2
    counts = np.bincount(shards, minlength=8)
    assert counts.min() > 180 and counts.max() < 320


def test_csv_dataset_relative_absolute_and_errors(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    a = encode(numbered_frames(3, 32, 32), tmp_path / "v" / "a.mp4")
    b = encode(numbered_frames(3, 32, 32), tmp_path / "b b.mp4")
    train = write_csv(tmp_path / "train.csv", [("v/a.mp4", "dog"), (str(b), "cat"), ("v/none.mp4", "cat")])
    val = write_csv(tmp_path / "val.csv", [("v/a.mp4", "emu")])
    spec = {"kind": "csv", "splits": {"train": str(train), "val": str(val)}}
    res = build_index(spec, "train", 2)
    assert res.classes == ["cat", "dog", "emu"]
    assert [(r.video_id, r.path, r.label_index) for r in res.rows] == [("v/a.mp4", str(a), 1), (str(b), str(b), 0)]
    assert [m.video_id for m in res.missing] == ["v/none.mp4"]

    dup = write_csv(tmp_path / "dup.csv", [("v/a.mp4", "dog"), ("v/a.mp4", "dog")])
    with pytest.raises(DatasetSpecError, match="listed twice"):
        build_index({"kind": "csv", "splits": {"train": str(dup)}}, "train", 1)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nx.mp4,dog\n")
    with pytest.raises(DatasetSpecError, match="path,label"):
        build_index({"kind": "csv", "splits": {"train": str(bad)}}, "train", 1)
    with pytest.raises(DatasetSpecError, match="does not exist"):
        build_index({"kind": "csv", "splits": {"train": str(tmp_path / "nope.csv")}}, "train", 1)
    with pytest.raises(DatasetSpecError, match="unknown dataset kind"):
        build_index({"kind": "youtube"}, "train", 1)
    with pytest.raises(DatasetSpecError, match="needs the key 'root'"):
        build_index({"kind": "kinetics", "annotations": {}}, "train", 1)
    with pytest.raises(DatasetSpecError, match="demo"):
        build_index({"kind": "demo", "root": str(tmp_path / "no_demo")}, "train", 1)


def test_frames_source_packs_original_folders_without_reencoding(tmp_path: Path) -> None:
    from tokshift.data.jpeg import decode_rgb, encode_rgb
    from tokshift.data.pack import pack_shard
    from tokshift.data.store import ShardReader

    root = tmp_path / "frames"
    originals = {}
    # vid_c has more files than its list line says, vid_d fewer: the list's count is what the original samples.
    for name, n, size in (
        ("vid_a", 5, (40, 56)),
        ("class x/vid_b", 3, (56, 40)),
        ("vid_c", 6, (40, 56)),
        ("vid_d", 2, (40, 56)),
    ):
        folder = root / name
        folder.mkdir(parents=True)
        jpegs = [encode_rgb(f, 85) for f in numbered_frames(n, *size, seed=n)]
        for i, data in enumerate(jpegs, start=1):
            (folder / f"img_{i:05d}.jpg").write_bytes(data)
        originals[name] = jpegs
    (root / "empty_vid").mkdir()
    train = tmp_path / "train.txt"
    train.write_text("vid_a 5 1\nclass x/vid_b 3 0\nempty_vid 0 2\ngone 7 1\nvid_c 4 0\nvid_d 3 0\n")
    val = tmp_path / "val.txt"
    val.write_text("vid_a 5 1\n")
    classes = tmp_path / "classes.txt"
    classes.write_text("archery\nbowling\ncurling\n")
    spec = {
        "kind": "frames",
        "root": str(root),
        "lists": {"train": str(train), "val": str(val)},
        "classes": str(classes),
    }
    res = build_index(spec, "train", 1)
    assert res.classes == ["archery", "bowling", "curling"]
    assert [(r.video_id, r.label, r.label_index) for r in res.rows] == [
        ("vid_a", "bowling", 1),
        ("class x/vid_b", "archery", 0),
        ("empty_vid", "curling", 2),
        ("vid_c", "archery", 0),
        ("vid_d", "archery", 0),
    ]
    assert [r.nframes for r in res.rows] == [5, 3, 0, 4, 3]
    assert [m.video_id for m in res.missing] == ["gone"]
    index = tmp_path / "idx" / "train.csv"
    write_index(res, index)
    result = pack_shard(index, 0, tmp_path / "s.lmdb", progress=False)
    assert result.packed == 3 and [f["video_id"] for f in result.failures] == ["empty_vid", "vid_d"]
    assert (
        "the list gives 3 frames, but the folder has 2 of img_00001.jpg ... img_00003.jpg"
        in result.failures[1]["reason"]
    )
    reader = ShardReader(tmp_path / "s.lmdb")
    assert reader.read_frames("vid_c", range(4)) == originals["vid_c"][:4] and reader.meta("vid_c")["nframes"] == 4
    assert reader.read_frames("vid_a", range(5)) == originals["vid_a"]  # byte for byte
    assert reader.meta("class x/vid_b")["width"] == 40 and reader.meta("class x/vid_b")["height"] == 56
    assert decode_rgb(reader.read_frames("vid_a", [0])[0]).shape == (40, 56, 3)

    no_names = build_index({k: v for k, v in spec.items() if k != "classes"}, "val", 1)
    assert no_names.classes == ["0", "1", "2"] and no_names.rows[0].label == "1"


def test_a_split_without_videos_is_rejected_at_index_time_with_the_file_named(tmp_path: Path) -> None:
    header_only = write_csv(tmp_path / "empty.csv", [])
    assert header_only.read_text().strip() == "path,label"
    out = tmp_path / "index" / "train.csv"
    spec = {"kind": "csv", "splits": {"train": str(header_only)}}
    argv = ["index", "--spec-json", json.dumps(spec), "--split", "train", "--out", str(out)]
    assert main(argv) == ExitCode.BAD_INPUT and not out.exists()  # nothing for packing and training to choke on
    with pytest.raises(
        DatasetSpecError, match=rf"{header_only} lists no videos for split 'train' .*only a header.*add"
    ):
        build_index(spec, "train", 1)

    gone = write_csv(tmp_path / "gone.csv", [("a.mp4", "x"), ("b.mp4", "y")])
    with pytest.raises(DatasetSpecError, match=rf"none of the 2 videos that {gone} lists .* 'a.mp4'.*fix the paths"):
        build_index({"kind": "csv", "splits": {"train": str(gone)}}, "train", 1)

    (tmp_path / "k").mkdir()
    k_ann = tmp_path / "k.csv"
    k_ann.write_text("label,youtube_id,time_start,time_end,split\n")
    with pytest.raises(DatasetSpecError, match=rf"{k_ann} lists no videos for split 'val'"):
        build_index({"kind": "kinetics", "root": str(tmp_path / "k"), "annotations": {"val": str(k_ann)}}, "val", 1)

    frames_list = tmp_path / "train_list.txt"
    frames_list.write_text("\n")
    with pytest.raises(DatasetSpecError, match=rf"{frames_list} lists no videos for split 'train'"):
        build_index({"kind": "frames", "root": str(tmp_path), "lists": {"train": str(frames_list)}}, "train", 1)
