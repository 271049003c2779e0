"""The explain figure: one row per forward pass, the clip's frames with attention, the top-5 at the right."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tokshift.fileio import atomic_savefig
from tokshift.viz.explain import Explanation, Pass

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["FRAME_GID", "render_explanation", "save_explanation", "save_placeholder"]

FRAME_GID = "frame"  # the gid of each frame panel, so a test can count them


def _row_name(p: Pass, arch: str) -> str:
    if arch != "tokshift":
        return "ViT (no shift)"
    return "shift on" if p.shift else "shift off\n(per-frame ViT)"


def _frame_panel(ax: Axes, frame: np.ndarray, attention: np.ndarray, logit: float) -> None:
    h, w = frame.shape[:2]
    ax.imshow(frame, extent=(0, w, h, 0))
    ax.imshow(attention, extent=(0, w, h, 0), cmap="inferno", alpha=0.45, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{logit:+.2f}", fontsize=8)
    ax.set_gid(FRAME_GID)


def _top5_panel(ax: Axes, p: Pass, classes: list[str], label: str | None) -> None:
    top = p.top(classes, 5)[::-1]
    names = [n for n, _ in top]
    colours = ["tab:green" if n == label else "tab:gray" for n in names]
    ax.barh(range(len(top)), [s for _, s in top], color=colours, alpha=0.6)
    for i, (name, score) in enumerate(top):  # names inside the panel, clear of the frames at its left
        ax.text(0.02, i, f"{name}  {score:.3f}", va="center", fontsize=7)
    ax.set_yticks([])
    ax.set_xlim(0, 1)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(f"top-5: {classes[p.predicted]} {p.probs[p.predicted]:.2f}", fontsize=8)


def render_explanation(e: Explanation) -> Figure:
    """A matplotlib Figure of `e` (no pyplot state: safe in scripts and workers)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = len(e.frames)
    rows = len(e.passes)
    top, row, bottom = 0.85, 1.9, 0.1  # inches: titles, one row (frames, logits, note), margin
    height = top + rows * row + bottom
    fig = Figure(figsize=(1.25 * t + 3.2, height), dpi=110)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(
        rows,
        t + 1,
        width_ratios=[1.0] * t + [2.4],
        wspace=0.08,
        hspace=0.75,
        top=1 - top / height,
        bottom=(bottom + 0.45) / height,
    )
    for r, p in enumerate(e.passes):
        cls = p.predicted
        for i in range(t):
            ax = fig.add_subplot(grid[r, i])
            _frame_panel(ax, e.frames[i], p.attention[i], float(p.frame_logits[i, cls]))
            if i == 0:
                ax.set_ylabel(_row_name(p, e.arch), fontsize=8)
            if r == 0:
                ax.set_title(f"frame {i + 1}", fontsize=7)
        box = grid[r, 0].get_position(fig)
        fig.text(
            box.x0,
            box.y0 - 0.36 / height,
            f"below each frame: its logit for {e.classes[cls]!r} (mean {float(p.logits[cls]):+.2f} = video logit)",
            fontsize=7,
            va="top",
        )
        _top5_panel(fig.add_subplot(grid[r, t]), p, e.classes, e.label)
    truth = f", true class {e.label!r}" if e.label is not None else ""
    fig.suptitle(
        f"{e.model} on {Path(e.video).name}{truth}\noverlay: [CLS] attention to the patches, "
        f"{e.attention_description} (colour scaled per frame)",
        fontsize=9,
        y=1 - 0.08 / height,
        va="top",
    )
    return fig


def save_explanation(e: Explanation, out: str | Path) -> Path:
    """Write the figure of `e` as a PNG (parent folders made)."""
    out = Path(out)
    atomic_savefig(render_explanation(e), out, format="png", bbox_inches="tight")
    return out


def save_placeholder(text: str, out: str | Path) -> Path:
    """A small PNG that says why a figure has nothing to show (a workflow expects the file all the same)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6, 1.2), dpi=110)
    FigureCanvasAgg(fig)
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, wrap=True)
    atomic_savefig(fig, out, format="png")
    return out
