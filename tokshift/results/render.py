"""Render the model-zoo table: CSV, markdown, the accuracy-vs-compute plot, the sources file and the model index."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokshift import provenance
from tokshift.fileio import atomic_savefig, atomic_write_text
from tokshift.results.table import COLUMN_SOURCES, COLUMNS, ResultsError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def _fmt(value: Any, digits: int | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if digits is not None:
        return f"{float(value):.{digits}f}"
    return str(value).replace("|", "\\|")


def _class_counts(val_only: Any, train_only: Any) -> str:
    """'1 / 0', or '—' where the evaluation could not tell (an empty count)."""
    import pandas as pd

    if pd.isna(val_only) or pd.isna(train_only):
        return "—"
    return f"{int(val_only)} / {int(train_only)}"


def _fmt_gflops(g: float) -> str:
    return f"{g:.1f}" if g >= 10 else f"{g:.4g}"


def to_markdown(df: pd.DataFrame) -> str:
    """A readable markdown table (the CSV keeps every column)."""
    dataset = df.attrs.get("dataset", "")
    header = [
        "Model",
        "Arch",
        "Backbone",
        "Started from",
        "Input",
        "GFLOPs × views",
        "Params (M)",
        "Top-1",
        "Top-5",
        "Top-1 (softmax)",
        "Top-1 (1 view)",
        "Top-1 (3 views)",
        "Mean class acc.",
        "Paper top-1",
        "Δ top-1",
        "Val videos (failed)",
        "Epochs",
        "GPUs",
        "Train h",
        "Checkpoint sha256",
        "Checkpoint source",
        "Val-only / train-only classes",
        "Top-1 (trained classes)",
    ]
    lines = [
        f"# Model zoo: {dataset}" if dataset else "# Model zoo",
        "",
        "Accuracies in percent. Top-1/top-5 fuse the views by averaging logits; the softmax column "
        "averages probabilities instead; the 1- and 3-view columns score the same videos with 1 and 3 "
        "views. Δ is our top-1 minus the paper's. Failed videos are missing, unpackable or unreadable "
        "validation videos; they are not counted in the accuracy. Val-only classes have validation videos "
        "but no training video: their videos count as errors, and the last column gives the top-1 without "
        "them (— where the checkpoint does not say what it was trained on). Every number is traced to its "
        "input file in `model_zoo.sources.json`.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 4 else "---:" for i in range(len(header))) + "|",
    ]
    for r in df.to_dict(orient="records"):
        delta = r["delta_top1"]
        delta_s = "—" if isinstance(delta, float) and math.isnan(delta) else f"{delta:+.2f}"
        cells = [
            f"`{_fmt(r['model'])}`",
            _fmt(r["arch"]),
            _fmt(r["backbone"]),
            _fmt(r["init_from"]),
            f"{r['num_frames']}×{r['frame_stride']}, {r['img_size']}px",
            f"{_fmt_gflops(r['gflops_per_view'])} × {r['views']}",
            _fmt(r["params_m"], 2),
            _fmt(r["top1"], 2),
            _fmt(r["top5"], 2),
            _fmt(r["top1_softmax"], 2),
            _fmt(r["top1_1view"], 2),
            _fmt(r["top1_3view"], 2),
            _fmt(r["mean_class_acc"], 2),
            _fmt(r["paper_top1"], 2),
            delta_s,
            f"{r['val_videos']} ({r['val_failed']})",
            _fmt(r["epochs"]),
            _fmt(r["gpus"]),
            _fmt(r["train_hours"], 3),
            f"`{str(r['checkpoint_sha256'])[:12]}`",
            _fmt(r["checkpoint_source"]),
            _class_counts(r["val_only_classes"], r["train_only_classes"]),
            _fmt(r["top1_trained_classes"], 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_gflops(df: pd.DataFrame, out_plot: Path) -> None:
    """Top-1 against total GFLOPs (per view × views), one labelled point per model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colours = {"tokshift": "tab:red", "vit": "tab:blue"}
    x = df["gflops_per_view"].astype(float) * df["views"].astype(float)
    for arch, colour in colours.items():
        sel = df["arch"] == arch
        if sel.any():
            ax.scatter(x[sel], df.loc[sel, "top1"], color=colour, s=40, zorder=3, label=f"{arch} (ours)")
    other = ~df["arch"].isin(list(colours))
    if other.any():
        ax.scatter(x[other], df.loc[other, "top1"], color="tab:gray", s=40, zorder=3, label="other (ours)")
    for xi, yi, name in zip(x, df["top1"], df["model"]):
        ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(5, 4), fontsize=7)
    paper = df[df["paper_top1"].notna()]
    if len(paper):
        ax.scatter(
            paper["gflops_per_view"].astype(float) * 30.0,
            paper["paper_top1"],
            facecolors="none",
            edgecolors="black",
            s=40,
            zorder=2,
            label="paper (30 views)",
        )
    positive = x[x > 0]
    if len(positive) and positive.max() / positive.min() > 20:
        ax.set_xscale("log")
    ax.set_xlabel("GFLOPs × views")
    ax.set_ylabel("top-1 accuracy (%)")
    dataset = df.attrs.get("dataset", "")
    ax.set_title(f"Accuracy vs. compute{': ' + dataset if dataset else ''}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out_plot.parent.mkdir(parents=True, exist_ok=True)
    atomic_savefig(fig, out_plot, bbox_inches="tight")


def sources_path(out_csv: Path) -> Path:
    """``model_zoo.csv`` -> ``model_zoo.sources.json`` beside it."""
    return out_csv.with_name(out_csv.stem + ".sources.json")


def model_index_path(out_csv: Path) -> Path:
    """``model_zoo.csv`` -> ``model-index.yml`` beside it (the name model-index readers look for)."""
    return Path(out_csv).with_name("model-index.yml")


# The paper every row of the table belongs to (the Collection of model-index.yml).
COLLECTION = "TokShift"
PAPER = {
    "Title": "Token Shift Transformer for Video Classification",
    "URL": "https://arxiv.org/abs/2108.02432",
    "Venue": "ACM MM 2021",
}


def _known(value: Any) -> Any:
    """The cell, or None where the table has no value (empty, NaN or 'unknown')."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str) and value in ("", "unknown"):
        return None
    return value.item() if hasattr(value, "item") else value


def _training_resources(gpus: Any, trained_on: Any) -> str | None:
    """'8 GPUs (8× NVIDIA A100-SXM4-80GB)' or 'CPU' from the gpus and trained_on columns."""
    if gpus is None:
        return None
    if int(gpus) == 0:
        return "CPU"
    text = f"{int(gpus)} GPU{'s' if int(gpus) != 1 else ''}"
    return f"{text} ({trained_on})" if trained_on else text


def model_index(df: pd.DataFrame, readme: str | None = None) -> dict[str, Any]:
    """The table as a model-index metafile: one Collection (the paper) and one entry per row.

    Every value is a cell of the table (FLOPs per view and parameters as plain numbers, as
    metafile readers expect); a cell the table lacks is left out rather than filled in.
    """
    dataset = df.attrs.get("dataset") or None
    collection: dict[str, Any] = {"Name": COLLECTION, "Paper": dict(PAPER)}
    if readme:
        collection["README"] = readme
    models = []
    for r in df.to_dict(orient="records"):
        cell = {k: _known(v) for k, v in r.items()}
        trained = cell["checkpoint_source"] == "trained"
        meta: dict[str, Any] = {
            "Architecture": cell["arch"],
            "Backbone": cell["backbone"],
            "Pretrained": cell["init_from"],
            "Batch Size": int(cell["global_batch"]) if cell["global_batch"] is not None else None,
            "Epochs": int(cell["epochs"]) if cell["epochs"] is not None else None,
            "FLOPs": int(round(float(cell["gflops_per_view"]) * 1e9)),
            "Parameters": int(round(float(cell["params_m"]) * 1e6)),
            "Resolution": f"{int(cell['img_size'])}x{int(cell['img_size'])}",
            "Frames": int(cell["num_frames"]),
            "Frame Stride": int(cell["frame_stride"]),
            "Views": int(cell["views"]),
            "Training Data": dataset if trained else None,
            "Training Resources": _training_resources(cell["gpus"], cell["trained_on"]),
        }
        entry: dict[str, Any] = {
            "Name": cell["model"],
            "In Collection": COLLECTION,
            # The zoo entry (a name for config.yaml's `models`) that builds and trains it.
            "Config": cell["model"],
            "Metadata": {k: v for k, v in meta.items() if v is not None},
            "Results": [
                {
                    "Task": "Action Recognition",
                    **({"Dataset": dataset} if dataset else {}),
                    "Metrics": {"Top 1 Accuracy": float(cell["top1"]), "Top 5 Accuracy": float(cell["top5"])},
                }
            ],
        }
        weights = cell["checkpoint"] if trained else cell["checkpoint_source"]
        if weights:
            entry["Weights"] = str(weights)
        if trained and cell["checkpoint"]:
            # The training writes its per-step and per-epoch log beside the checkpoint.
            entry["Training Log"] = str(Path(str(cell["checkpoint"])).with_name("metrics.jsonl"))
        models.append(entry)
    return {"Collections": [collection], "Models": models}


def write_model_index(df: pd.DataFrame, out: Path, readme: str | None = None) -> Path:
    """Write ``model_index(df)`` as YAML to ``out``."""
    import yaml

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(model_index(df, readme), sort_keys=False, allow_unicode=True, width=120)
    header = "# The model-zoo table as a model index: every value is a cell of the table beside it.\n"
    atomic_write_text(out, header + text)
    return out


def write_outputs(df: pd.DataFrame, out_csv: Path, out_md: Path, out_plot: Path) -> list[Path]:
    """Write the CSV, markdown, plot, ``<csv stem>.sources.json`` and ``model-index.yml``; return their paths."""
    out_csv, out_md, out_plot = Path(out_csv), Path(out_md), Path(out_plot)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ResultsError(f"the table lacks column(s) {missing}; build it with tokshift.results.collect")
    for p in (out_csv, out_md, out_plot):
        p.parent.mkdir(parents=True, exist_ok=True)
    # Each file is replaced whole (tokshift.fileio): a reader never sees half a table.
    atomic_write_text(out_csv, df.loc[:, list(COLUMNS)].to_csv(index=False, na_rep=""))
    atomic_write_text(out_md, to_markdown(df))
    plot_accuracy_vs_gflops(df, out_plot)
    src = sources_path(out_csv)
    atomic_write_text(
        src,
        json.dumps(
            {
                "dataset": df.attrs.get("dataset"),
                # The collect job's own code and software (each model's train and eval blocks are under models).
                "provenance": provenance.finish(df.attrs.get("provenance") or provenance.collect("collect")),
                "models": df.attrs.get("sources", {}),
                "columns": df.attrs.get("column_sources", COLUMN_SOURCES),
            },
            indent=2,
        )
        + "\n",
    )
    index = model_index_path(out_csv)
    write_model_index(df, index, readme=os.path.relpath(out_md.resolve(), index.parent.resolve()))
    log.info("wrote %s, %s, %s, %s, %s", out_csv, out_md, out_plot, src, index)
    return [out_csv, out_md, out_plot, src, index]
