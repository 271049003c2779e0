"""A finished model kept where Snakemake never deletes it, until a newer one exists.

Snakemake deletes a job's declared outputs (`model.pt`, `metrics.jsonl`,
`train_summary.json`) before it reruns the job (`--forcerun train`, a changed input or
parameter), and a finished training has already removed its resume checkpoints. So at the
end of every successful training those files are hard-linked (no extra disk) into
`<out>/final/<sha256[:12] of model.pt>/`. A retrain writes the new `model.pt` atomically at
its end, links it into a new folder beside the old one, and only then removes the older
folders: a retrain that fails or is cancelled leaves the previous model in `final/`.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

FINAL_DIR = "final"
KEPT_FILES = ("model.pt", "train_summary.json", "metrics.jsonl")


def final_copy_path(out: str | os.PathLike[str], digest: str) -> Path:
    """Where the finished run whose model.pt has sha256 `digest` is kept."""
    return Path(out) / FINAL_DIR / digest[:12]


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links: a real copy
        shutil.copy2(src, dst)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def keep_final_copy(out: str | os.PathLike[str], digest: str) -> Path:
    """Link `out`'s finished outputs into final/<digest[:12]>/, then drop every other kept copy."""
    out = Path(out)
    final = out / FINAL_DIR
    final.mkdir(parents=True, exist_ok=True)
    dest = final_copy_path(out, digest)
    tmp = final / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name in KEPT_FILES:
        if (out / name).is_file():
            _link_or_copy(out / name, tmp / name)
    shutil.rmtree(dest, ignore_errors=True)  # the same weights kept before: replace them
    tmp.rename(dest)
    _fsync_dir(final)
    for other in final.iterdir():
        if other != dest:
            if other.is_dir():
                shutil.rmtree(other, ignore_errors=True)
            else:
                other.unlink(missing_ok=True)
            log.info("removed the previous finished model %s", other)
    return dest


def kept_copies(out: str | os.PathLike[str]) -> list[Path]:
    """The kept finished runs of `out` (folders holding a model.pt), oldest first."""
    final = Path(out) / FINAL_DIR
    if not final.is_dir():
        return []
    found = [p for p in final.iterdir() if not p.name.startswith(".") and (p / "model.pt").is_file()]
    return sorted(found, key=lambda p: (p / "model.pt").stat().st_mtime)
