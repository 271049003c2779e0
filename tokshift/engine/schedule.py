"""Learning-rate rules: linear scaling to the global batch, step and one-cycle schedules.

The schedule is a pure function of the optimizer step, so resuming only needs
the step counter (no scheduler object whose pickled state could drift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tokshift.zoo import ZooConfig


def scaled_lr(cfg: ZooConfig, world_size: int, reference_global_batch: int | None = None) -> float:
    """Linear scaling rule: `cfg.lr` times actual / reference global batch.

    The reference is the zoo entry's own run (pass it explicitly when `cfg` has
    overridden batch_size/gpus/accum_steps, so that those overrides rescale the LR).
    """
    actual = cfg.batch_size * world_size * cfg.accum_steps
    ref = reference_global_batch or cfg.reference_global_batch
    return cfg.lr * actual / ref


@dataclass(frozen=True)
class LRSchedule:
    """LR multiplier for each optimizer step of a run."""

    kind: str  # "step" | "onecycle"
    steps_per_epoch: int
    epochs: int
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    start_factor: float = 1.0 / 25.0  # one-cycle: LR at step 0 relative to the peak

    @classmethod
    def from_config(cls, cfg: ZooConfig, steps_per_epoch: int) -> LRSchedule:
        return cls(
            kind=cfg.lr_schedule,
            steps_per_epoch=steps_per_epoch,
            epochs=cfg.epochs,
            milestones=tuple(cfg.lr_milestones),
            gamma=cfg.lr_gamma,
            warmup_epochs=cfg.warmup_epochs,
        )

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def factor(self, step: int) -> float:
        """Multiplier of the base LR used by optimizer step `step` (0-based)."""
        warm = int(round(self.warmup_epochs * self.steps_per_epoch))
        if self.kind == "step":
            f = self.gamma ** sum(step >= m * self.steps_per_epoch for m in self.milestones)
            if warm and step < warm:
                f *= (step + 1) / warm
            return f
        if self.kind == "onecycle":
            if warm and step < warm:
                return self.start_factor + (1 - self.start_factor) * step / warm
            span = max(self.total_steps - warm, 1)
            t = min(max(step - warm, 0) / span, 1.0)
            return 0.5 * (1 + math.cos(math.pi * t))
        raise ValueError(f"unknown lr_schedule {self.kind!r}; expected 'step' or 'onecycle'")
