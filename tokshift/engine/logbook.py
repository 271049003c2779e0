"""Training logs: JSON lines (one per logging step and per epoch) and TensorBoard events.

The live log sits in the resume folder so a killed job keeps it; on resume the
records after the checkpoint's step are dropped, so the final log has each step
exactly once.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf
    return v


class Logbook:
    """Appends records to a JSONL file and scalars to TensorBoard (rank 0 only)."""

    def __init__(
        self, folder: Path, resume_step: int | None = None, enabled: bool = True, tensorboard: bool = True
    ) -> None:
        self.enabled = enabled
        self.path = folder / "metrics.jsonl"
        self.events = folder / "events"
        self._writer = None
        if not enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        truncate_after(self.path, resume_step if resume_step is not None else 0)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.events), purge_step=resume_step)
            except Exception as exc:  # noqa: BLE001 - logs are not worth failing training for
                log.warning("TensorBoard disabled: %s", exc)

    def write(self, record: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        if self._writer is not None:
            prefix = record.get("kind", "step")
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch") and math.isfinite(v):
                    self._writer.add_scalar(f"{prefix}/{k}", v, step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All complete records of a JSONL file (a torn last line is ignored)."""
    out = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_after(path: Path, step: int) -> None:
    """Keep only records at or before optimizer step `step` (all of them are redone after)."""
    if not path.exists():
        return
    keep = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= step]
    if step == 0:
        keep = []
    path.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
