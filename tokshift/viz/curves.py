"""Training curves from the metrics.jsonl `tokshift train` writes (tokshift/engine/logbook.py).

Step records (`kind: step`) give the running training loss and the learning rate every
logging step; epoch records (`kind: epoch`) the epoch's training loss and the 1-view
validation accuracy and loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokshift.errors import BadInput, InputMissing

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Curves", "read_curves", "render_comparison", "render_curves"]


def _num(v: Any) -> float:
    """A logged value as float: NaN/inf were written as strings, missing values become NaN."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


@dataclass
class Curves:
    """One training run's series (lists of equal length within each kind)."""

    name: str
    steps: list[int]
    step_loss: list[float]
    step_lr: list[float]
    epochs: list[int]
    epoch_steps: list[int]
    train_loss: list[float]
    train_top1: list[float]
    val_top1: list[float]  # 1-view validation top-1, percent (NaN when not validated)
    val_loss: list[float]


def read_curves(path: str | Path, name: str | None = None) -> Curves:
    """The curves of one metrics.jsonl; `name` defaults to the run's folder name."""
    from tokshift.engine.logbook import read_jsonl

    path = Path(path)
    if not path.is_file():
        raise InputMissing(f"training log {path} does not exist; train the model first (tokshift train)")
    records = read_jsonl(path)
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    if not steps and not epochs:
        raise BadInput(f"{path} holds no step or epoch records; is it the metrics.jsonl of `tokshift train`?")
    return Curves(
        name=name or path.parent.name,
        steps=[int(r["step"]) for r in steps],
        step_loss=[_num(r.get("loss")) for r in steps],
        step_lr=[_num(r.get("lr")) for r in steps],
        epochs=[int(r["epoch"]) for r in epochs],
        epoch_steps=[int(r["step"]) for r in epochs],
        train_loss=[_num(r.get("train_loss")) for r in epochs],
        train_top1=[_num(r.get("train_top1")) for r in epochs],
        val_top1=[_num(r.get("val_top1_1view")) for r in epochs],
        val_loss=[_num(r.get("val_loss")) for r in epochs],
    )


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _epoch_axis(ax: Any, c: Curves) -> None:
    """Epoch numbers on a top axis at the step each epoch ended."""
    if not c.epoch_steps:
        return
    top = ax.secondary_xaxis("top")
    top.set_xticks(c.epoch_steps, [str(e) for e in c.epochs], fontsize=7)
    top.set_xlabel("epoch", fontsize=8)


def render_curves(c: Curves) -> Figure:
    """Loss and learning rate against optimizer steps, accuracy against epochs, for one run."""
    fig = _figure(13, 3.8)
    loss, lr, acc = fig.subplots(1, 3)
    loss.plot(c.steps, c.step_loss, color="tab:blue", alpha=0.5, lw=1, label="train (logging step)")
    loss.plot(c.epoch_steps, c.train_loss, "o-", color="tab:blue", ms=3, label="train (epoch)")
    if any(math.isfinite(v) for v in c.val_loss):
        loss.plot(c.epoch_steps, c.val_loss, "s-", color="tab:orange", ms=3, label="val, 1 view (epoch)")
    loss.set_xlabel("optimizer step")
    loss.set_ylabel("cross-entropy loss")
    loss.legend(fontsize=7)
    _epoch_axis(loss, c)
    lr.plot(c.steps, c.step_lr, color="tab:green")
    lr.set_xlabel("optimizer step")
    lr.set_ylabel("learning rate")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    _epoch_axis(lr, c)
    acc.plot(c.epochs, c.train_top1, "o-", color="tab:blue", ms=3, label="train (augmented clips)")
    if any(math.isfinite(v) for v in c.val_top1):
        acc.plot(c.epochs, c.val_top1, "s-", color="tab:orange", ms=3, label="val, 1 view")
    acc.set_xlabel("epoch")
    acc.set_ylabel("top-1 (%)")
    acc.set_ylim(0, 100)
    acc.legend(fontsize=7, loc="lower right")
    for ax in (loss, lr, acc):
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"training curves: {c.name}", fontsize=10)
    fig.tight_layout()
    return fig


def render_comparison(runs: Sequence[Curves], title: str = "all models") -> Figure:
    """Every run's training loss per step and 1-view validation top-1 per epoch, in two panels."""
    fig = _figure(11, 4)
    loss, acc = fig.subplots(1, 2)
    colours = [f"C{i}" for i in range(10)]
    for i, c in enumerate(runs):
        col = colours[i % len(colours)]
        loss.plot(c.steps, c.step_loss, color=col, lw=1, label=c.name)
        if any(math.isfinite(v) for v in c.val_top1):
            acc.plot(c.epochs, c.val_top1, "o-", color=col, ms=3, label=c.name)
    loss.set_xlabel("optimizer step")
    loss.set_ylabel("training loss")
    acc.set_xlabel("epoch")
    acc.set_ylabel("val top-1, 1 view (%)")
    acc.set_ylim(0, 100)
    for ax in (loss, acc):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"training compared: {title}", fontsize=10)
    fig.tight_layout()
    return fig
