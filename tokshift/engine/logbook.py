"""Training logs: JSON lines (one per logging step and per epoch), TensorBoard events, Weights & Biases.

The live log sits in the resume folder so a killed job keeps it; on resume the
records after the checkpoint's step are dropped, so the final log has each step
exactly once. `metrics.jsonl` is always written; the loggers (`train.loggers`) get the same
scalars: TensorBoard under `events/`, W&B (optional package) in the run W&B's own environment
variables choose (WANDB_PROJECT, WANDB_ENTITY, WANDB_MODE=offline, WANDB_DIR, ...).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokshift.errors import BadInput
from tokshift.fileio import atomic_write_text

log = logging.getLogger(__name__)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf
    return v


#: The loggers `train.loggers` may name, besides metrics.jsonl.
LOGGERS = ("tensorboard", "wandb")
#: W&B's project when WANDB_PROJECT is unset.
WANDB_PROJECT = "tokshift"


@dataclass(frozen=True)
class RunInfo:
    """A training as an experiment tracker shows it: name, the id resumed attempts share, settings."""

    name: str
    run_id: str
    folder: Path  # the model's output folder (W&B writes under it unless WANDB_DIR is set)
    config: dict[str, Any] = field(default_factory=dict)


def require_loggers(loggers: tuple[str, ...] | list[str]) -> None:
    """Refuse unknown loggers, and W&B when its package is missing, before anything trains."""
    unknown = sorted(set(loggers) - set(LOGGERS))
    if unknown:
        raise BadInput(f"--loggers {' '.join(unknown)}: unknown; choose from {', '.join(LOGGERS)}")
    if "wandb" in loggers:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise BadInput(
                "train.loggers names wandb but the wandb package is not installed in the job's environment: "
                "pip install 'tokshift[wandb]', or drop wandb from train.loggers"
            ) from None


class Logbook:
    """Appends records to a JSONL file and their scalars to the chosen loggers (rank 0 only)."""

    def __init__(
        self,
        folder: Path,
        resume_step: int | None = None,
        enabled: bool = True,
        loggers: tuple[str, ...] | list[str] = ("tensorboard",),
        run: RunInfo | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = folder / "metrics.jsonl"
        self.events = folder / "events"
        self._writer = None
        self._wandb = None
        if not enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        truncate_after(self.path, resume_step if resume_step is not None else 0)
        if "wandb" in loggers and run is not None:
            self._wandb = _start_wandb(run)
        if "tensorboard" in loggers:
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
        if self._wandb is not None:
            prefix = record.get("kind", "step")
            scalars = {
                f"{prefix}/{k}": v
                for k, v in record.items()
                if isinstance(v, (int, float)) and k not in ("step", "epoch") and math.isfinite(v)
            }
            if scalars:
                self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _start_wandb(run: RunInfo) -> Any:
    """A W&B run for this training; a resumed attempt continues the one its identity names."""
    import wandb

    return wandb.init(
        project=os.environ.get("WANDB_PROJECT") or WANDB_PROJECT,
        name=run.name,
        id=run.run_id,
        resume="allow",
        dir=os.environ.get("WANDB_DIR") or str(run.folder),
        config=run.config,
    )


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
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))  # a kill mid-write keeps the old log
