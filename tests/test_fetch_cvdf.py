"""Kinetics-400 from a miniature CVDF mirror served on 127.0.0.1: part lists, ffmpeg-made clips
in .tar.gz parts, annotation CSVs listing absent clips, a replacement archive, a part that drops
mid-transfer and one that answers 404 until the "server" is fixed."""

from __future__ import annotations

import contextlib
import csv
import http.server
import io
import json
import re
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.workflow_helpers import copy_workflow, snakemake
from tokshift.data.demo import encode_h264, render_clip
from tokshift.data.pack import read_listing
from tokshift.data.store import ShardReader
from tokshift.fetch.cvdf import FetchError, apply_replacement, extract_archive, fetch_part, read_part_list
from tokshift.workflow.config import cvdf_settings, index_inputs


@dataclass
class Mirror:
    """What the loopback server serves (path -> bytes), how it misbehaves, and what it was asked."""

    files: dict[str, bytes] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)  # answered 404
    drop_first: set[str] = field(default_factory=set)  # first full GET sends half, then hangs up
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(mirror: Mirror) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str], send: int | None = None) -> None:
            self.send_response(status)
            for k, v in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            sent = len(body) if send is None else send
            self.wfile.write(body[:sent])
            self.wfile.flush()
            if sent < len(body):
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        def do_GET(self) -> None:
            path, rng = self.path, self.headers.get("Range")
            with mirror.lock:
                mirror.requests.append((path, rng))
                drop = path in mirror.drop_first and rng is None
                if drop:
                    mirror.drop_first.discard(path)
            if path in mirror.missing or path not in mirror.files:
                return self._send(404, b"", {})
            data = mirror.files[path]
            if rng:
                start = int(re.match(r"bytes=(\d+)-", rng).group(1))
                if start >= len(data):
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                return self._send(206, data[start:], {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
            return self._send(200, data, {"Accept-Ranges": "bytes"}, send=len(data) // 2 if drop else None)

    return Handler


@contextlib.contextmanager
def serve(mirror: Mirror) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(mirror))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def targz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# -- units --------------------------------------------------------------------------------------
def test_extraction_keeps_every_member_inside_the_target(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(targz({"ok.mp4": b"x", "../escaped.mp4": b"y"}))
    with pytest.raises(FetchError, match="unsafe member"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.mp4").exists()
    # An absolute name lands under the target, not at that path.
    absolute = tmp_path / "abs" / "escape.mp4"
    archive.write_bytes(targz({str(absolute): b"z"}))
    assert extract_archive(archive, tmp_path / "out2")["videos"] == 1
    assert not absolute.exists() and (tmp_path / "out2" / str(absolute).lstrip("/")).read_bytes() == b"z"


def test_truncated_archive_is_deleted_with_its_url_named(tmp_path: Path) -> None:
    whole = targz({f"v{i}.mp4": np.random.default_rng(i).bytes(20_000) for i in range(3)})
    mirror = Mirror(files={"/p/part_0.tar.gz": whole[: len(whole) // 2]})
    with serve(mirror) as url:
        listing = tmp_path / "list.txt"
        listing.write_text(f"{url}/p/part_0.tar.gz\n")
        with pytest.raises(FetchError, match=rf"{re.escape(url)}/p/part_0.tar.gz.*not a complete tar archive"):
            fetch_part(listing, "part_0", tmp_path / "archives", tmp_path / "videos", tmp_path / "m.json", retries=0)
    assert not (tmp_path / "archives" / "part_0.tar.gz").exists()
    assert not (tmp_path / "m.json").exists()


def test_part_is_extracted_then_its_archive_deleted_when_asked(tmp_path: Path) -> None:
    clip = np.random.default_rng(1).bytes(30_000)
    mirror = Mirror(files={"/p/part_3.tar.gz": targz({"part_3/abc_000000_000010.mp4": clip})})
    mirror.drop_first.add("/p/part_3.tar.gz")
    with serve(mirror) as url:
        listing = tmp_path / "list.txt"
        listing.write_text(f"# train parts\n{url}/p/part_3.tar.gz\n")
        record = fetch_part(
            listing,
            "part_3",
            tmp_path / "archives",
            tmp_path / "videos",
            tmp_path / "m.json",
            delete_archive=True,
            retries=1,
            backoff=0.01,
        )
    assert (tmp_path / "videos/part_3/abc_000000_000010.mp4").read_bytes() == clip
    assert record["videos"] == 1 and record["archive_deleted"] is True
    assert json.loads((tmp_path / "m.json").read_text()) == record
    left = sorted(f.name for f in (tmp_path / "archives").iterdir())
    assert left == ["part_3.tar.gz.sha256"]  # no archive, no partial download; the checksum it had
    assert [r for _, r in mirror.requests][0] is None and (mirror.requests[1][1] or "").startswith("bytes=")


def test_part_list_rejects_duplicates_and_empty_lists(tmp_path: Path) -> None:
    p = tmp_path / "list.txt"
    p.write_text("https://h/a/part_0.tar.gz\n\nhttps://h/b/part_1.tar.gz\n")
    assert [x.name for x in read_part_list(p)] == ["part_0", "part_1"]
    p.write_text("https://h/a/part_0.tar.gz\nhttps://h/b/part_0.tar.gz\n")
    with pytest.raises(FetchError, match="listed twice"):
        read_part_list(p)
    p.write_text("\n")
    with pytest.raises(FetchError, match="holds no URLs"):
        read_part_list(p)


def test_replacement_overwrites_the_clip_of_the_same_name(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "train" / "part_0").mkdir(parents=True)
    (root / "train" / "part_0" / "abc_000001_000011.mp4").write_bytes(b"corrupt")
    archive = tmp_path / "replacement.tgz"
    archive.write_bytes(
        targz({"replacement/abc_000001_000011.mp4": b"good", "replacement/new_000000_000010.mp4": b"n"})
    )
    record = apply_replacement(archive, root, tmp_path / "replacement.json")
    assert (record["replaced"], record["added"]) == (1, 1)
    assert (root / "train" / "part_0" / "abc_000001_000011.mp4").read_bytes() == b"good"
    assert (root / "replacement" / "new_000000_000010.mp4").read_bytes() == b"n"
    assert not list(root.glob(".replacement-*"))


def test_fetch_settings_default_to_the_cvdf_mirror() -> None:
    spec = {"kind": "kinetics", "zoo": "k400", "root": "/data/k400", "fetch": "cvdf"}
    config = {"dataset": "k", "datasets": {"k": spec}}
    s = cvdf_settings(config)
    assert s["lists"]["train"] == "https://s3.amazonaws.com/kinetics/400/train/k400_train_path.txt"
    assert s["annotations"]["val"] == "https://s3.amazonaws.com/kinetics/400/annotations/val.csv"
    assert s["replacement"].endswith("/replacement_for_corrupted_k400.tgz")
    assert s["download_dir"] == "/data/k400/cvdf" and s["delete_archives"] is False
    csvs = ["/data/k400/cvdf/annotations/train.csv", "/data/k400/cvdf/annotations/val.csv"]
    assert index_inputs(config, "val") == index_inputs(config, "train") == csvs


# -- the workflow from nothing --------------------------------------------------------------------
CLASSES = ("brighten", "darken", "disc_grow")


def _clip(label: str, seed: int, tmp: Path) -> bytes:
    path = tmp / f"{label}-{seed}.mp4"
    encode_h264(render_clip(label, np.random.default_rng(seed), frames=16, size=64), path, fps=8)
    return path.read_bytes()


def _vid(split: str, ci: int, i: int) -> tuple[str, int]:
    """A YouTube-like id (11 characters) and a start second."""
    return f"{split[:2]}{CLASSES[ci][:3]}{i:06d}", 10 * i


def build_mirror(tmp: Path) -> tuple[Mirror, dict[str, set[str]]]:
    """Parts (train: good, drops mid-transfer, 404 at first; val: good), annotations, replacement."""
    mirror = Mirror()
    expected: dict[str, set[str]] = {"train": set(), "val": set(), "absent": set()}
    rows: dict[str, list[list[str]]] = {"train": [], "val": []}
    parts: dict[str, dict[str, dict[str, bytes]]] = {"train": {"part_0": {}, "part_1": {}, "part_2": {}}, "val": {}}
    parts["val"]["part_0"] = {}
    layout = {"train": (6, ["part_0", "part_0", "part_1", "part_1", "part_2", None]), "val": (3, ["part_0"])}
    seed = 0
    for split, (per_class, where) in layout.items():
        for ci, label in enumerate(CLASSES):
            for i in range(per_class):
                yid, start = _vid(split, ci, i)
                name = f"{yid}_{start:06d}_{start + 10:06d}"
                rows[split].append([label, yid, str(start), str(start + 10), "validate" if split == "val" else split])
                part = where[i % len(where)] if i < per_class - 1 else None  # the last of each class is absent
                if part is None:
                    expected["absent"].add(name)
                    continue
                seed += 1
                parts[split][part][f"{part}/{label}/{name}.mp4"] = _clip(label, seed, tmp)
                expected[split].add(name)
    # One clip is corrupt in its part; the replacement archive holds it intact.
    corrupt = sorted(parts["train"]["part_0"])[0]
    good = parts["train"]["part_0"][corrupt]
    parts["train"]["part_0"][corrupt] = good[:200]
    mirror.files["/kinetics/400/replacement_for_corrupted_k400.tgz"] = targz({"k400/" + Path(corrupt).name: good})
    for split, by_part in parts.items():
        urls = []
        for part, members in by_part.items():
            path = f"/kinetics/400/{split}/{part}.tar.gz"
            mirror.files[path] = targz(members)
            urls.append(path)
        mirror.files[f"/kinetics/400/{split}/k400_{split}_path.txt"] = "\n".join("{base}" + u for u in urls).encode()
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split", "is_cc"])
        w.writerows(r + ["0"] for r in rows[split])
        mirror.files[f"/kinetics/400/annotations/{split}.csv"] = buf.getvalue().encode()
    mirror.missing.add("/kinetics/400/train/part_2.tar.gz")
    mirror.drop_first.add("/kinetics/400/train/part_1.tar.gz")
    return mirror, expected


def _with_base(mirror: Mirror, base: str) -> None:
    for path, data in list(mirror.files.items()):
        if path.endswith("_path.txt"):
            mirror.files[path] = data.replace(b"{base}", base.encode())


@pytest.mark.slow
def test_kinetics_from_a_mirror_to_packed_shards(tmp_path: Path) -> None:
    """Fetch (a 404 part, a dropped transfer, a corrupt clip and its replacement), index and pack;
    training on packed shards is the demo pipeline's subject, so the run stops at the shards."""
    import pandas as pd

    t0 = time.monotonic()
    (tmp_path / "clips").mkdir()
    mirror, expected = build_mirror(tmp_path / "clips")
    wf = copy_workflow(tmp_path / "wf")
    with serve(mirror) as base:
        _with_base(mirror, base)
        k = f"{base}/kinetics/400"
        cfg = yaml.safe_load((wf / "config.yaml").read_text())
        cfg["dataset"] = "k400mini"
        cfg["models"] = ["demo_tokshift"]
        cfg["datasets"]["k400mini"] = {
            "kind": "kinetics",
            "zoo": "demo",
            "root": "data/k400mini",
            "fetch": "cvdf",
            "cvdf": {
                "lists": {s: f"{k}/{s}/k400_{s}_path.txt" for s in ("train", "val")},
                "annotations": {s: f"{k}/annotations/{s}.csv" for s in ("train", "val")},
                "replacement": f"{k}/replacement_for_corrupted_k400.tgz",
                "retries": 2,
                "backoff": 0.05,
            },
            "frames": {"short_side": 64, "shards": 2},
        }
        (wf / "config.yaml").write_text(yaml.safe_dump(cfg))
        targets = [f"results/k400mini/frames/{split}/summary.json" for split in ("train", "val")]

        first = snakemake(wf, *targets, "--cores", "2", "--keep-going", "--show-failed-logs", timeout=600)
        t_first = time.monotonic() - t0
        assert first.returncode != 0, first.stdout[-3000:]
        out = first.stdout + first.stderr
        missing_url = f"{k}/train/part_2.tar.gz"
        assert "HTTP 404" in out and missing_url in out, out[-4000:]
        dl = wf / "data/k400mini/cvdf"
        assert sorted(p.name for p in (dl / "extracted/train").glob("*.json")) == ["part_0.json", "part_1.json"]
        assert (dl / "extracted/val/part_0.json").is_file()
        assert not (wf / "results/k400mini/index").exists()  # indexing waits for every part
        # The part that dropped mid-transfer was resumed, not fetched again from byte 0.
        part1 = [r for p, r in mirror.requests if p.endswith("/train/part_1.tar.gz")]
        assert part1[0] is None and re.fullmatch(r"bytes=[1-9]\d*-", part1[1] or ""), part1

        mirror.missing.clear()  # the server is fixed
        seen = len(mirror.requests)
        second = snakemake(wf, *targets, "--cores", "2", "--keep-going", "--show-failed-logs", timeout=900)
        assert second.returncode == 0, (second.stdout + second.stderr)[-5000:]
        again = [p for p, _ in mirror.requests[seen:]]
    assert sorted(again) == ["/kinetics/400/replacement_for_corrupted_k400.tgz", "/kinetics/400/train/part_2.tar.gz"]
    print(f"mirror workflow: first run {t_first:.0f} s, both runs {time.monotonic() - t0:.0f} s")

    results = wf / "results/k400mini"
    assert not (results / "train").exists()  # nothing past the shards was asked for
    replaced = json.loads((dl / "replacement.json").read_text())
    assert replaced["replaced"] == 1
    for split in ("train", "val"):
        missing = pd.read_csv(results / f"index/{split}.missing.csv")
        assert set(missing["video_id"]) == {n for n in expected["absent"] if n.startswith(split[:2])}
        summary = json.loads((results / f"frames/{split}/summary.json").read_text())
        assert summary["packed"] == len(expected[split]) and summary["failed"] == 0, summary
        listed: set[str] = set()
        frames = 0
        for shard in sorted((results / f"frames/{split}").glob("shard-*.lmdb")):
            reader = ShardReader(shard)
            for row in read_listing(shard.with_suffix(".videos.csv")):
                n = int(row["frames"])
                assert n == reader.meta(row["video_id"])["nframes"] == 16
                assert len(reader.read_frames(row["video_id"], range(n))) == n
                assert (int(row["width"]), int(row["height"])) == (64, 64) and float(row["fps"]) == 8.0
                assert int(row["bytes"]) == reader.meta(row["video_id"])["bytes"] > 0
                listed.add(row["video_id"])
                frames += n
            reader.close()
        assert listed == expected[split]
        assert summary["total_frames"] == frames


def test_config_example_plans_the_fetch_before_anything_else(tmp_path: Path) -> None:
    """The commented `fetch: cvdf` entry of config.yaml validates and plans the lists and annotations first."""
    wf = copy_workflow(tmp_path / "wf")
    text = (wf / "config.yaml").read_text()
    block = text[text.index("# Or from nothing") : text.index("# Any dataset given")].splitlines()
    start = block.index("  # kinetics400:")
    entry = yaml.safe_load("\n".join(ln[4:] for ln in block[start:] if ln.startswith("  # ")))
    entry["kinetics400"]["root"] = str(tmp_path / "k400")
    cfg = yaml.safe_load(text)
    cfg["datasets"].update(entry)
    cfg["dataset"] = "kinetics400"
    (wf / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake(wf, "-n", "-p", "--cores", "2", check=True).stdout
    assert re.search(r"^cvdf_part_list\s+2$", out, re.M) and re.search(r"^cvdf_annotations\s+2$", out, re.M), out
    assert "https://s3.amazonaws.com/kinetics/400/train/k400_train_path.txt" in out
    assert f"{tmp_path}/k400/cvdf/annotations/val.csv" in out
    assert not re.search(r"^fetch_part\s+\d+$", out, re.M)  # the parts are known once the lists are in
