"""Checkpoints that survive crashes: sealed with checksums, resumed from the newest valid one.

A resume checkpoint is written atomically (`tokshift.fileio`) and then sealed by a
`.sha256` file beside it. A checkpoint without a matching seal (a crash mid-write,
a truncated copy, a flipped bit) is skipped with a warning and the next older one
is tried, so a broken file is never loaded.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokshift.errors import BadInput, InputMissing
from tokshift.fileio import atomic_torch_save, atomic_write_text, sha256_file

log = logging.getLogger(__name__)

RESUME_PATTERN = re.compile(r"^ckpt-e(\d+)-s(\d+)\.pt$")


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


class CheckpointError(BadInput):
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
        raise InputMissing(f"checkpoint {path} does not exist; train the model first (tokshift train)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc}); retrain or re-copy it") from exc
    for key in ("model", "config", "classes"):
        if not isinstance(state, dict) or key not in state:
            raise CheckpointError(f"checkpoint {path} has no {key!r} entry; is it a `tokshift train` model.pt?")
    return state
