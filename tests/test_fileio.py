"""Atomic writes keep the old file on failure, leave no temporaries, and hash what they save."""

from __future__ import annotations

import hashlib
import json

import pytest

from tokshift.fileio import (
    atomic_path,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    sha256_file,
)


def test_writes_replace_content_and_leave_nothing_else(tmp_path) -> None:
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "first\n")
    atomic_write_text(target, "zweite Zeile ü\r\n")
    assert target.read_bytes() == "zweite Zeile ü\r\n".encode()  # no newline translation
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic_write_json(tmp_path / "m.json", {"a": [1, 2], "name": "é"})
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8")) == {"a": [1, 2], "name": "é"}
    assert "é" in (tmp_path / "m.json").read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["b.bin", "m.json", "out.txt"]


def test_failed_block_keeps_old_file_and_removes_temporary(tmp_path) -> None:
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="encoder failed"):
        with atomic_path(target, suffix=".mp4") as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".mp4" and tmp != target
            tmp.write_bytes(b"half")
            raise RuntimeError("encoder failed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    with atomic_path(target, suffix=".mp4") as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"


def test_torch_save_digest_is_sha256_of_the_file(tmp_path) -> None:
    import torch

    path = tmp_path / "ckpt.pt"
    state = {"w": torch.arange(1000, dtype=torch.float32), "step": 7}
    digest = atomic_torch_save(state, path)
    assert digest == sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 7 and torch.equal(loaded["w"], state["w"])
    assert sha256_file(path, chunk_bytes=7) == digest  # chunking does not change the hash


# Runs in a fresh interpreter, which may set its own umask freely (the test process's
# umask is process-wide state other tests rely on). Prints {umask: {file: mode}}.
_WRITE_UNDER_UMASKS = r"""
import io, json, os, sys, tarfile
from pathlib import Path

import torch

from tokshift.data.store import ShardWriter
from tokshift.engine.folder_lock import FolderLock
from tokshift.fetch.cvdf import extract_archive
from tokshift.fileio import atomic_path, atomic_torch_save, atomic_write_bytes, atomic_write_json, atomic_write_text

archive = Path(sys.argv[1]) / "part.tar"
with tarfile.open(archive, "w") as tar:  # members recorded private and executable: the umask must win
    for name, mode in (("clips/a.mp4", 0o600), ("clips/b.mp4", 0o755)):
        info = tarfile.TarInfo(name)
        info.size, info.mode = 3, mode
        tar.addfile(info, io.BytesIO(b"abc"))
modes = {}
for umask in (0o022, 0o027, 0o002):
    os.umask(umask)
    root = Path(sys.argv[1]) / f"{umask:03o}"
    atomic_write_bytes(root / "sub" / "bytes.bin", b"x")
    atomic_write_text(root / "text.txt", "x")
    atomic_write_json(root / "metrics.json", {"a": 1})
    atomic_torch_save({"w": torch.zeros(2)}, root / "model.pt")
    with atomic_path(root / "clip.mp4", suffix=".mp4") as tmp:
        tmp.write_bytes(b"made by another program")
    with ShardWriter(root / "shard.lmdb", ["a"]) as w:
        w.add_video("v0", [b"jpeg"], {"label": 0})
        w.finish()
    FolderLock(root / "run", "train").acquire().release()
    extract_archive(archive, root / "videos")
    modes[f"{umask:03o}"] = {
        str(p.relative_to(root)): f"{p.stat().st_mode & 0o7777:04o}" for p in sorted(root.rglob("*"))
    }
print(json.dumps(modes))
"""


def test_writers_honour_the_umask(tmp_path) -> None:
    """Outputs are shared the way the user's umask says (0644 under 022, 0640 under 027, 0664 under
    002 for a group that shares runs), not made
    private by a temporary file's 0600, nor kept as an archive recorded them."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _WRITE_UNDER_UMASKS, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    modes = json.loads(proc.stdout)
    expected_files = {
        "sub/bytes.bin",
        "text.txt",
        "metrics.json",
        "model.pt",
        "clip.mp4",
        "shard.lmdb",
        "shard.lmdb.seal.json",
        "run/.tokshift.lock",
        "videos/clips/a.mp4",
        "videos/clips/b.mp4",
    }
    for umask, file_mode, dir_mode in (("022", "0644", "0755"), ("027", "0640", "0750"), ("002", "0664", "0775")):
        found = modes[umask]
        assert expected_files <= set(found), sorted(found)
        wrong = {
            name: mode
            for name, mode in found.items()
            if mode != (dir_mode if (tmp_path / umask / name).is_dir() else file_mode)
        }
        assert not wrong, f"under umask {umask} files should be {file_mode}, folders {dir_mode}: {wrong}"
