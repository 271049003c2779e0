"""No command overwrites its own input: an output that is an input (the same path, after symlinks
and `..`, or a hard link to it), or an output folder a command empties that holds an input, is
refused with one line naming both paths, exit BAD_INPUT, the input byte-identical and nothing
written.

Each command runs in this process on real files; the commands are enumerated from the parser, so
a new command fails here until it has an overwrite case or is listed as writing no file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.engine_helpers import run_cli_inprocess
from tokshift.cli import build_parser
from tokshift.data.sources import INDEX_COLUMNS
from tokshift.errors import BadInput, ExitCode
from tokshift.fileio import refuse_folder_over_input, refuse_output_over_input, refuse_shared_outputs

# Commands that write no file a user names: they print (zoo, predict, provenance, env) or make a
# dataset from nothing (demo).
WRITES_NO_NAMED_FILE = {"zoo", "predict", "provenance", "env", "demo"}


def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def _index(t: Path) -> Path:
    """A one-row index CSV of shard 0 and its classes (the video is never opened: the refusal comes first)."""
    row = ["v1", str(t / "v1.mp4"), "a", "0", "val", "0", ""]
    _write(t / "index" / "val.classes.txt", "a\n")
    return _write(t / "index" / "val.csv", ",".join(INDEX_COLUMNS) + "\n" + ",".join(row) + "\n")


def _metrics_jsonl(t: Path) -> Path:
    return _write(t / "run" / "metrics.jsonl", '{"kind": "step", "step": 1, "loss": 1.0, "lr": 0.1}\n')


# command -> (argv built in a temporary folder T, absolute paths only; the input that must survive,
# relative to T; text of the message, with {t} standing for T)
Case = tuple[Callable[[Path], list[str]], str, str]
OVERWRITES: dict[str, Case] = {
    "preflight-probe": (
        lambda t: [
            "--model",
            "demo_tokshift",
            "--step",
            "train",
            "--shards",
            str(_write(t / "s.lmdb", b"x")),
            "--out",
            str(t / "s.lmdb"),
        ],
        "s.lmdb",
        "--out {t}/s.lmdb is the input {t}/s.lmdb",
    ),  # fmt: skip
    "preflight-report": (
        lambda t: [
            "--dataset",
            "demo",
            "--jobs",
            "{}",
            "--executor",
            "local",
            "--probes",
            str(_write(t / "p.json", "{}")),
            "--json",
            str(t / "p.json"),
            "--md",
            str(t / "r.md"),
        ],
        "p.json",
        "--json {t}/p.json is the input {t}/p.json",
    ),  # fmt: skip
    "import-original": (
        lambda t: [str(_write(t / "X.pth", b"pth")), "--model", "demo_vit", "--out", str(t / "X.pth")],
        "X.pth",
        "--out {t}/X.pth is the input {t}/X.pth",
    ),
    "export": (
        lambda t: [str(_write(t / "run" / "model.pt", b"pt")), "--out-dir", str(t / "run")],
        "run/model.pt",
        "--out-dir {t}/run contains the input {t}/run/model.pt",
    ),
    "train": (
        lambda t: [
            "--model",
            "demo_vit",
            "--train-shards",
            str(t / "t.lmdb"),
            "--out-dir",
            str(t / "run"),
            "--init-from",
            str(_write(t / "run" / "model.pt", b"pt")),
        ],
        "run/model.pt",
        "--out-dir's {t}/run/model.pt is the input {t}/run/model.pt",
    ),
    "evaluate": (
        lambda t: [
            "--checkpoint",
            str(_write(t / "model.pt", b"pt")),
            "--shards",
            str(t / "s.lmdb"),
            "--out-dir",
            str(t / "model.pt"),
        ],
        "model.pt",
        "--out-dir {t}/model.pt is the input {t}/model.pt",
    ),
    "index": (
        lambda t: [
            "--spec-json",
            json.dumps({"kind": "csv", "splits": {"train": str(_write(t / "ann.csv", "path,label\nv.mp4,a\n"))}}),
            "--split",
            "train",
            "--out",
            str(t / "ann.csv"),
        ],
        "ann.csv",
        "--out {t}/ann.csv is the input {t}/ann.csv",
    ),
    "pack": (
        lambda t: [
            "--index",
            str(_index(t)),
            "--shard",
            "0",
            "--out",
            str(t / "s.lmdb"),
            "--failures",
            str(t / "index" / "val.csv"),
        ],
        "index/val.csv",
        "--failures {t}/index/val.csv is the input {t}/index/val.csv",
    ),
    "summarize": (
        lambda t: [
            "--index",
            str(_index(t)),
            "--shards-dir",
            str(t / "frames"),
            "--out",
            str(t / "index" / "val.classes.txt"),
        ],
        "index/val.classes.txt",
        "--out {t}/index/val.classes.txt is the input {t}/index/val.classes.txt",
    ),
    "collect": (
        lambda t: [
            "--dataset",
            "demo",
            "--metrics",
            str(_write(t / "metrics.json", "{}")),
            "--train-summaries",
            str(t / "s.json"),
            "--csv",
            str(t / "zoo.csv"),
            "--md",
            str(t / "metrics.json"),
            "--plot",
            str(t / "zoo.png"),
        ],
        "metrics.json",
        "--md {t}/metrics.json is the input {t}/metrics.json",
    ),
    "explain": (
        lambda t: [str(_write(t / "clip.png", b"\x89PNG")), "--checkpoint", str(t / "model.pt"), "--out-dir", str(t)],
        "clip.png",
        "the figure {t}/clip.png is the input {t}/clip.png",
    ),
    "per-class": (
        lambda t: [
            "--predictions",
            str(_write(t / "p.csv", "video_id,label\n")),
            "--csv",
            str(t / "out.csv"),
            "--plot",
            str(t / "p.csv"),
        ],
        "p.csv",
        "--plot {t}/p.csv is the input {t}/p.csv",
    ),
    "curves": (
        lambda t: [
            "--metrics",
            str(_metrics_jsonl(t)),
            "--out-dir",
            str(t / "figs"),
            "--comparison",
            str(t / "run" / "metrics.jsonl"),
        ],
        "run/metrics.jsonl",
        "--comparison {t}/run/metrics.jsonl is the input {t}/run/metrics.jsonl",
    ),
    "download": (
        lambda t: ["--url", str(_write(t / "w.npz", b"npz")), "--out", str(t / "w.npz")],
        "w.npz",
        "--out {t}/w.npz is the input {t}/w.npz",
    ),
    "fetch-part": (
        lambda t: [
            "--list",
            str(_write(t / "l.txt", "https://127.0.0.1:9/k400/part_0.tar.gz\n")),
            "--part",
            "part_0",
            "--archives",
            str(t / "a"),
            "--dest",
            str(t / "v"),
            "--marker",
            str(t / "l.txt"),
            "--retries",
            "0",
        ],
        "l.txt",
        "--marker {t}/l.txt is the input {t}/l.txt",
    ),
    "fetch-replacement": (
        lambda t: [
            "--url",
            str(t / "r.tgz"),
            "--archive",
            str(_write(t / "a.tgz", b"tgz")),
            "--root",
            str(t / "v"),
            "--marker",
            str(t / "a.tgz"),
        ],
        "a.tgz",
        "--archive and --marker both name {t}/a.tgz",
    ),
}


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_every_command_that_writes_files_has_an_overwrite_case() -> None:
    (group,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(OVERWRITES) | WRITES_NO_NAMED_FILE == set(group.choices)
    assert not set(OVERWRITES) & WRITES_NO_NAMED_FILE


@pytest.mark.parametrize("command", sorted(OVERWRITES))
def test_an_output_over_an_input_is_refused_and_nothing_is_written(command: str, tmp_path: Path) -> None:
    build, kept, text = OVERWRITES[command]
    argv = build(tmp_path)
    before = _snapshot(tmp_path)
    assert kept in before
    res = run_cli_inprocess(command, *argv)
    assert res.returncode == ExitCode.BAD_INPUT, res.stderr
    errors = [line for line in res.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(f"tokshift {command}: error: "), res.stderr
    assert text.format(t=tmp_path) in errors[0] and "Traceback" not in res.stderr
    assert _snapshot(tmp_path) == before  # the input as it was, and no new file


def test_import_original_onto_its_source_by_any_name_is_refused(tmp_path: Path) -> None:
    """The campaign's case: `import-original X.pth --out X.pth` replaced the released checkpoint."""
    from tests.original_model import original_net, save_original

    src = save_original(original_net("vit", dim=32, depth=1, classes=3), tmp_path / "best.pth")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    os.link(src, tmp_path / "hard.pth")
    (tmp_path / "soft.pth").symlink_to(src.name)
    (tmp_path / "sub").mkdir()
    cases = {
        str(src): f"--out {src} is the input {src}",
        str(tmp_path / "hard.pth"): f"--out {tmp_path / 'hard.pth'} is a hard link to the input {src}",
        str(tmp_path / "sub" / ".." / "soft.pth"): f"is the input {src} (the same file)",
    }
    for out, text in cases.items():
        res = run_cli_inprocess("import-original", str(src), "--model", "demo_vit", "--out", out)
        assert res.returncode == ExitCode.BAD_INPUT, res.stderr
        assert text in res.stderr and "choose another output" in res.stderr
        assert hashlib.sha256(src.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth", "hard.pth", "soft.pth", "sub"]


def test_the_guard_tells_an_input_from_a_neighbour(tmp_path: Path) -> None:
    """What is refused and what is not: a neighbour in the same folder, a missing output and an
    input inside a folder the command only adds files to are fine."""
    a = _write(tmp_path / "run" / "a.txt", "a")
    refuse_output_over_input(tmp_path / "run" / "b.txt", [a, None, ""])
    refuse_output_over_input(tmp_path / "new" / "a.txt", [a])
    refuse_folder_over_input(tmp_path / "run", [a], name="--out-dir", files=("b.txt",), subfolders=("partial",))
    with pytest.raises(BadInput, match="contains the input"):
        refuse_output_over_input(tmp_path, [a], name="--out-dir", folder=True)
    with pytest.raises(BadInput, match="--out-dir's .*partial contains the input"):
        refuse_folder_over_input(
            tmp_path / "run", [tmp_path / "run" / "partial" / "x"], name="--out-dir", subfolders=("partial",)
        )
    with pytest.raises(BadInput, match="both name"):
        refuse_shared_outputs({"--csv": tmp_path / "x.csv", "--md": tmp_path / "run" / ".." / "x.csv"})
    refuse_shared_outputs({"--csv": tmp_path / "x.csv", "--md": tmp_path / "x.md", "--plot": None})
