"""Per-class accuracy and the most confused class pairs, from an evaluation's predictions.csv.

Everything is recomputed from the per-video rows `tokshift evaluate` writes (true label and
top-5 of the logit-averaged views); videos that failed to load (column `error`) are left
out, as in metrics.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tokshift.errors import BadInput, InputMissing

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "FULL_MATRIX_MAX",
    "PER_CLASS_COLUMNS",
    "UNTRAINED_MARK",
    "confusion_pairs",
    "per_class_table",
    "read_predictions",
    "render_confusions",
]

PER_CLASS_COLUMNS = ("class", "videos", "top1", "top5", "confused_with", "confused_count", "trained")
#: Appended to the name, in the figure, of a class with validation videos but no training video.
UNTRAINED_MARK = " (untrained)"
FULL_MATRIX_MAX = 30  # classes up to which the figure shows the whole confusion matrix
_NEEDED = ("video_id", "label", "pred1", "pred2", "pred3", "pred4", "pred5", "error")


def read_predictions(path: str | Path) -> pd.DataFrame:
    """The rows of a predictions.csv that were evaluated (string columns, failed videos dropped)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputMissing(f"predictions file {path} does not exist; run `tokshift evaluate` first")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise BadInput(
            f"{path} is empty (not even a header line); give the predictions.csv that `tokshift evaluate` "
            "writes in its --out-dir"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise BadInput(f"{path} is not a CSV file ({err}); give the predictions.csv of `tokshift evaluate`") from None
    missing = [c for c in _NEEDED if c not in df.columns]
    if missing:
        raise BadInput(f"{path} lacks column(s) {missing}; is it a predictions.csv of `tokshift evaluate`?")
    return df[df["error"] == ""].reset_index(drop=True)


def per_class_table(
    pred: pd.DataFrame, classes: Sequence[str] | None = None, val_only: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per class: videos, top-1 and top-5 (percent), the class its videos are most
    often mistaken for (top-1) with the count (empty and 0 when none is), and `trained`: False
    for the `val_only` classes (validation videos, no training video: their top-1 says nothing
    of the model), True for the others, empty when `val_only` is None (not known).

    Rows follow `classes` when given (classes without videos get NaN accuracies), else the
    sorted true labels. Ties in the most confused class go to the first in that order.
    """
    import pandas as pd

    order = list(classes) if classes is not None else sorted(set(pred["label"]))
    rank = {c: i for i, c in enumerate(order)}
    rows = []
    for c in order:
        mine = pred[pred["label"] == c]
        n = len(mine)
        top5_hit = (mine[[f"pred{i}" for i in range(1, 6)]] == c).any(axis=1)
        wrong = mine.loc[mine["pred1"] != c, "pred1"].value_counts()
        if len(wrong):
            best = max(wrong.items(), key=lambda kv: (kv[1], -rank.get(kv[0], len(order))))
            confused, count = best
        else:
            confused, count = "", 0
        rows.append(
            {
                "class": c,
                "videos": n,
                "top1": 100.0 * float((mine["pred1"] == c).mean()) if n else float("nan"),
                "top5": 100.0 * float(top5_hit.mean()) if n else float("nan"),
                "confused_with": confused,
                "confused_count": int(count),
                "trained": None if val_only is None else c not in val_only,
            }
        )
    return pd.DataFrame(rows, columns=list(PER_CLASS_COLUMNS))


def confusion_pairs(pred: pd.DataFrame, top: int = 20) -> pd.DataFrame:
    """The `top` (true, predicted) pairs with true != predicted, most frequent first."""
    wrong = pred[pred["pred1"] != pred["label"]]
    counts = wrong.groupby(["label", "pred1"]).size().rename("count").reset_index()
    counts = counts.rename(columns={"label": "true", "pred1": "predicted"})
    return counts.sort_values(["count", "true", "predicted"], ascending=[False, True, True]).head(top)


def render_confusions(pred: pd.DataFrame, classes: Sequence[str], title: str, val_only: Sequence[str] = ()) -> Figure:
    """The full confusion matrix (up to FULL_MATRIX_MAX classes) beside the most confused pairs; the
    `val_only` classes (never trained) are marked in red with UNTRAINED_MARK wherever they are named."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pairs = confusion_pairs(pred)
    untrained = set(val_only)

    def name(c: str) -> str:
        return c + UNTRAINED_MARK if c in untrained else c

    full = len(classes) <= FULL_MATRIX_MAX
    fig = Figure(figsize=(12 if full else 7, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, width_ratios=[1.2, 1]) if full else [None, fig.add_subplot(1, 1, 1)]
    if full:
        ax = axes[0]
        index = {c: i for i, c in enumerate(classes)}
        matrix = np.zeros((len(classes), len(classes)), dtype=int)
        for t, p in zip(pred["label"], pred["pred1"]):
            if t in index and p in index:
                matrix[index[t], index[p]] += 1
        rows = matrix.sum(axis=1, keepdims=True)
        share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        small = len(classes) <= 12
        for (i, j), n in np.ndenumerate(matrix):
            if n and small:
                ax.text(j, i, str(n), ha="center", va="center", fontsize=8, color="white" if share[i, j] > 0.5 else "k")
        ticks = range(len(classes))
        fs = 8 if small else 5
        ax.set_xticks(ticks, [name(c) for c in classes], rotation=90, fontsize=fs)
        ax.set_yticks(ticks, [name(c) for c in classes], fontsize=fs)
        for label in (*ax.get_xticklabels(), *ax.get_yticklabels()):
            if label.get_text().endswith(UNTRAINED_MARK):
                label.set_color("tab:red")
        ax.set_xlabel("predicted (top-1)")
        ax.set_ylabel("true class")
        ax.set_title("confusion matrix (colour: share of the row)", fontsize=9)
    ax = axes[1]
    if len(pairs):
        names = [f"{name(t)} → {name(p)}" for t, p in zip(pairs["true"], pairs["predicted"])][::-1]
        ax.barh(range(len(pairs)), list(pairs["count"])[::-1], color="tab:red", alpha=0.7)
        ax.set_yticks(range(len(pairs)), names, fontsize=7)
        for label in ax.get_yticklabels():
            if UNTRAINED_MARK in label.get_text():
                label.set_color("tab:red")
        ax.set_xlabel("videos")
    else:
        ax.text(0.5, 0.5, "no confusions: every video's top-1 is right", ha="center", va="center")
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_title(f"most confused pairs (true → predicted), {len(pairs)} shown", fontsize=9)
    if untrained:
        many = len(untrained) > 1
        title += (
            f"\n{len(untrained)} class{'es' if many else ''} marked (untrained) "
            f"{'have' if many else 'has'} validation videos but no training video"
        )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
