"""Checkpoints that survive crashes: sealed with checksums, resumed from the newest valid one.

A resume checkpoint is written atomically (`tokshift.fileio`) and then sealed by a
`.sha256` file beside it. A checkpoint without a matching seal (a crash mid-write,
a truncated copy, a flipped bit) is skipped with a warning and the next older one
is tried, so a broken file is never loaded.

The file name carries the run's identity tag (`ckpt-e0003-s000001200-<tag>.pt`), so that
keeping the newest few deletes only files of the run that writes them, without opening
any: a checkpoint of another run in the same folder is never pruned. Names without a tag
(written before tags existed) are still read.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from tokshift.errors import BadInput, InputMissing
from tokshift.fileio import atomic_torch_save, atomic_write_text, new_stale_folder, sha256_file

log = logging.getLogger(__name__)

RESUME_PATTERN = re.compile(r"^ckpt-e(\d+)-s(\d+)(?:-([0-9a-f]{12}))?\.pt$")

#: What lives in a resume folder beside the checkpoints: the live logs of the run (tokshift.engine.logbook).
LIVE_LOGS = ("metrics.jsonl", "events")


def resume_name(epoch: int, step: int, identity: str | None = None) -> str:
    return f"ckpt-e{epoch:04d}-s{step:09d}" + (f"-{identity}" if identity else "") + ".pt"


def resume_identity(path: str | os.PathLike[str]) -> str | None:
    """The identity tag in a resume checkpoint's name; None for an untagged (older) name."""
    m = RESUME_PATTERN.match(Path(path).name)
    return m.group(3) if m else None


def _position(path: Path) -> tuple[int, int]:
    m = RESUME_PATTERN.match(path.name)
    assert m, path
    return int(m.group(2)), int(m.group(1))  # (step, epoch)


def seal_of(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_resume(
    state: dict[str, Any],
    folder: str | os.PathLike[str],
    epoch: int,
    step: int,
    keep: int = 2,
    identity: str | None = None,
) -> Path:
    """Write a sealed resume checkpoint of run `identity` and keep the newest `keep` of that run's.

    Pruning deletes only checkpoints with the same identity tag that are older than the one just
    written; it never deletes the file it wrote, another run's files, or a file of this run at a
    later step (one a resume skipped as broken: it is overwritten when training gets there).
    """
    folder = Path(folder)
    path = folder / resume_name(epoch, step, identity)
    digest = atomic_torch_save(state, path)
    atomic_write_text(seal_of(path), f"{digest}  {path.name}\n")
    here = _position(path)
    older = [p for p in list_resume(folder) if resume_identity(p) == identity and _position(p) < here]
    for old in older[max(keep - 1, 0) :]:
        old.unlink(missing_ok=True)
        seal_of(old).unlink(missing_ok=True)
    return path


def list_resume(folder: str | os.PathLike[str]) -> list[Path]:
    """Resume checkpoints in `folder` (not in its subfolders), newest (highest step, epoch) first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(_position(p), p) for p in folder.iterdir() if RESUME_PATTERN.match(p.name)]
    return [p for _, p in sorted(found, reverse=True)]


class CheckpointError(BadInput):
    """A checkpoint file that must not be loaded (missing seal, bad checksum, unreadable)."""


def verify_seal(path: str | os.PathLike[str]) -> None:
    """Raise CheckpointError unless the file's sha256 matches its `.sha256` seal (reads the whole file)."""
    path = Path(path)
    seal = seal_of(path)
    if not seal.is_file():
        raise CheckpointError(f"{path}: no {seal.name} seal (the write did not finish)")
    text = seal.read_text()
    expected = text.split()[0] if text.strip() else ""
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointError(f"{path}: sha256 {actual[:12]}… does not match its seal {expected[:12]}…")


def load_resume(path: str | os.PathLike[str], map_location: Any = "cpu", mmap: bool = True) -> dict[str, Any]:
    """Read a checkpoint WITHOUT checking its seal; tensors memory-mapped by default.

    Memory-mapped, the tensors are read from the page cache when they are used, so several
    processes on a node that load the same file share one copy, and reading only the
    fingerprint of a large file is cheap. For a file another process has verified, or to look.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, mmap=mmap, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped the same way
        raise CheckpointError(f"{path}: cannot be read ({exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint dictionary")
    return state


def load_verified(path: str | os.PathLike[str], map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a sealed checkpoint after checking its sha256 against the seal."""
    verify_seal(path)
    return load_resume(path, map_location=map_location, mmap=mmap)


def warn_skipped(exc: CheckpointError) -> None:
    """The warning (and log line) for a checkpoint that is passed over because it is broken."""
    warnings.warn(f"skipping resume checkpoint: {exc}", RuntimeWarning, stacklevel=3)
    log.warning("skipping resume checkpoint: %s", exc)


def set_aside(folder: str | os.PathLike[str], checkpoints: Iterable[Path], with_logs: bool) -> Path:
    """Move `checkpoints` (with their seals) and, with `with_logs`, the live logs of `folder` into
    a new `folder/stale-<UTC time>/`; returns that folder. Nothing is deleted."""
    folder = Path(folder)
    dest = new_stale_folder(folder)
    moved = []
    for ckpt in checkpoints:
        moved += [ckpt, seal_of(ckpt)]
    if with_logs:
        moved += [folder / name for name in LIVE_LOGS]
    for p in moved:
        if p.exists():
            shutil.move(str(p), str(dest / p.name))
    return dest


def load_model_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a final `model.pt`, failing with a message that names the file."""
    path = Path(path)
    if not path.is_file():
        raise InputMissing(f"checkpoint {path} does not exist; train the model first (tokshift train)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc}); retrain or re-copy it") from exc
    for key in ("model", "config", "classes"):
        if not isinstance(state, dict) or key not in state:
            raise CheckpointError(f"checkpoint {path} has no {key!r} entry; is it a `tokshift train` model.pt?")
    return state
