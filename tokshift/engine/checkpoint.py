"""Checkpoints that survive crashes: atomic writes, checksums, newest-valid resume.

A resume checkpoint is written to a temporary file, flushed, renamed into place and
then sealed by a `.sha256` file beside it. A checkpoint without a matching seal
(a crash mid-write, a truncated copy, a flipped bit) is skipped with a warning and
the next older one is tried, so a broken file is never loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from tokshift.weights import sha256_file

__all__ = ["sha256_file"]  # re-exported: evaluation records the checkpoint's hash

log = logging.getLogger(__name__)

RESUME_PATTERN = re.compile(r"^ckpt-e(\d+)-s(\d+)\.pt$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A temporary file beside `path`, flushed and renamed onto it only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` so that `path` holds either the old content or all of the new."""
    with _atomic_file(Path(path)) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> str:
    """`torch.save` atomically; returns the sha256 of what was written."""
    with _atomic_file(Path(path)) as f:
        hasher = _HashingWriter(f)
        torch.save(obj, hasher)
    return hasher.hexdigest()


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes what passes through (saves a second read)."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self._h = hashlib.sha256()
        self._pos = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:  # type: ignore[override]
        mv = memoryview(b).cast("B")
        self._h.update(mv)
        self._f.write(mv)
        self._pos += len(mv)
        return len(mv)

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return False

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def resume_name(epoch: int, step: int) -> str:
    return f"ckpt-e{epoch:04d}-s{step:09d}.pt"


def save_resume(state: dict[str, Any], folder: str | os.PathLike[str], epoch: int, step: int, keep: int = 2) -> Path:
    """Write a sealed resume checkpoint and keep only the newest `keep` of them."""
    folder = Path(folder)
    path = folder / resume_name(epoch, step)
    digest = atomic_torch_save(state, path)
    atomic_write_text(path.with_name(path.name + ".sha256"), f"{digest}  {path.name}\n")
    for old in list_resume(folder)[keep:]:
        old.unlink(missing_ok=True)
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    return path


def list_resume(folder: str | os.PathLike[str]) -> list[Path]:
    """Resume checkpoints in `folder`, newest (highest epoch, step) first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = RESUME_PATTERN.match(p.name)
        if m:
            found.append(((int(m.group(2)), int(m.group(1))), p))
    return [p for _, p in sorted(found, reverse=True)]


class CheckpointError(RuntimeError):
    """A checkpoint file that must not be loaded (missing seal, bad checksum, unreadable)."""


def load_verified(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a sealed checkpoint after checking its sha256 against the seal."""
    path = Path(path)
    seal = path.with_name(path.name + ".sha256")
    if not seal.is_file():
        raise CheckpointError(f"{path}: no {seal.name} seal (the write did not finish)")
    expected = seal.read_text().split()[0] if seal.read_text().strip() else ""
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointError(f"{path}: sha256 {actual[:12]}… does not match its seal {expected[:12]}…")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped the same way
        raise CheckpointError(f"{path}: cannot be read ({exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint dictionary")
    return state


@dataclass
class Resumed:
    path: Path
    state: dict[str, Any]


def find_resume(folder: str | os.PathLike[str], map_location: Any = "cpu", accept: Any = None) -> Resumed | None:
    """The newest resume checkpoint in `folder` that verifies (and that `accept(state)` takes).

    Broken files are skipped with a warning; `accept` returns None to take a
    state or a reason string to pass it over (e.g. it belongs to another config).
    """
    for path in list_resume(folder):
        try:
            state = load_verified(path, map_location=map_location)
        except CheckpointError as exc:
            warnings.warn(f"skipping resume checkpoint: {exc}", RuntimeWarning, stacklevel=2)
            log.warning("skipping resume checkpoint: %s", exc)
            continue
        reason = accept(state) if accept is not None else None
        if reason:
            warnings.warn(f"skipping resume checkpoint {path}: {reason}", RuntimeWarning, stacklevel=2)
            log.warning("skipping resume checkpoint %s: %s", path, reason)
            continue
        return Resumed(path, state)
    return None


def load_model_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a final `model.pt`, failing with a message that names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train the model first (tokshift train)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc}); retrain or re-copy it") from exc
    for key in ("model", "config", "classes"):
        if not isinstance(state, dict) or key not in state:
            raise CheckpointError(f"checkpoint {path} has no {key!r} entry; is it a `tokshift train` model.pt?")
    return state
