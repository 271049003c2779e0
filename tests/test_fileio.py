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
