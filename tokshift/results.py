"""Collect per-model training and evaluation outputs into the model-zoo table.

Every number in ``model_zoo.csv`` comes from a file: evaluation metrics from
``results/<dataset>/eval/<model>/metrics.json`` (rule ``evaluate``), training
facts from ``results/<dataset>/train/<model>/train_summary.json`` (rule
``train``), the frame-packing counts from ``results/<dataset>/frames/val/summary.json``
when present, and architecture/cost/paper numbers from the zoo.  The files used
per model are written to ``model_zoo.sources.json`` so a reader can trace them.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

# The results table interface: these columns, in this order.
COLUMNS: tuple[str, ...] = (
    "model",
    "arch",
    "backbone",
    "pretrained",
    "img_size",
    "num_frames",
    "frame_stride",
    "shift_div",
    "params_m",
    "gflops_per_view",
    "views",
    "top1",
    "top5",
    "top1_softmax",
    "top1_1view",
    "top1_3view",
    "mean_class_acc",
    "paper_top1",
    "delta_top1",
    "val_videos",
    "val_failed",
    "epochs",
    "gpus",
    "train_hours",
    "checkpoint",
    "checkpoint_sha256",
)

METRICS_KEYS: tuple[str, ...] = (
    "top1",
    "top5",
    "top1_softmax",
    "top1_1view",
    "top1_3view",
    "mean_class_acc",
    "videos",
    "views",
    "failed",
)
TRAIN_KEYS: tuple[str, ...] = (
    "epochs",
    "world_size",
    "device",
    "train_hours",
    "checkpoint",
    "checkpoint_sha256",
)
PACK_KEYS: tuple[str, ...] = ("missing", "failed")

# Where each column comes from (written into model_zoo.sources.json).
COLUMN_SOURCES: dict[str, str] = {
    **{
        c: "zoo"
        for c in (
            "arch",
            "backbone",
            "pretrained",
            "img_size",
            "num_frames",
            "frame_stride",
            "shift_div",
            "params_m",
            "gflops_per_view",
            "paper_top1",
        )
    },
    **{
        c: f"metrics:{c}"
        for c in ("views", "top1", "top5", "top1_softmax", "top1_1view", "top1_3view", "mean_class_acc")
    },
    "model": "zoo",
    "delta_top1": "metrics:top1 - zoo:paper_top1",
    "val_videos": "metrics:videos",
    "val_failed": "pack_summary:missing + pack_summary:failed + metrics:failed (metrics:failed alone "
    "when there is no pack summary)",
    "epochs": "train_summary:epochs",
    "gpus": "train_summary:world_size when train_summary:device is cuda, else 0",
    "train_hours": "train_summary:train_hours",
    "checkpoint": "train_summary:checkpoint",
    "checkpoint_sha256": "train_summary:checkpoint_sha256",
}

ACCURACY_COLUMNS = (
    "top1",
    "top5",
    "top1_softmax",
    "top1_1view",
    "top1_3view",
    "mean_class_acc",
    "paper_top1",
    "delta_top1",
)


class ResultsError(RuntimeError):
    """An input of the results table is missing or malformed."""


class MissingResultError(ResultsError, FileNotFoundError):
    """A per-model output file does not exist yet."""


def metrics_path(results_dir: Path, dataset: str, model: str) -> Path:
    """The evaluation metrics written by the ``evaluate`` rule."""
    return Path(results_dir) / dataset / "eval" / model / "metrics.json"


def train_summary_path(results_dir: Path, dataset: str, model: str) -> Path:
    """The training summary written by the ``train`` rule."""
    return Path(results_dir) / dataset / "train" / model / "train_summary.json"


def pack_summary_path(results_dir: Path, dataset: str) -> Path:
    """The validation packing counts (optional input)."""
    return Path(results_dir) / dataset / "frames" / "val" / "summary.json"


def _load_json(path: Path, rule: str, required: tuple[str, ...]) -> dict[str, Any]:
    """Read a JSON object, naming the file and the rule that makes it on any problem."""
    if not path.is_file():
        raise MissingResultError(
            f"{path} is missing; it is written by the `{rule}` rule "
            f"(run `snakemake {path}` or `tokshift {rule}` for this model first)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path} is not valid JSON ({err}); rerun the `{rule}` rule to rewrite it") from err
    if not isinstance(data, dict):
        raise ResultsError(f"{path} must hold a JSON object; rerun the `{rule}` rule to rewrite it")
    missing = [k for k in required if k not in data]
    if missing:
        raise ResultsError(f"{path} lacks key(s) {missing}; rerun the `{rule}` rule to rewrite it")
    return data


def _num(value: Any, path: Path, key: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ResultsError(f"{path}: {key}={value!r} is not a number") from None
    if math.isnan(out):
        raise ResultsError(f"{path}: {key} is NaN")
    return out


def _check_model(data: dict[str, Any], model: str, path: Path) -> None:
    if "model" in data and data["model"] != model:
        raise ResultsError(f"{path} belongs to model {data['model']!r}, not {model!r}; the file is misplaced")


def _model_row(
    dataset: str, model: str, results_dir: Path, pack: dict[str, Any] | None, pack_file: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One table row and the files it was read from."""
    from tokshift.flops import zoo_row
    from tokshift.zoo import get_config

    try:
        cfg = get_config(model)
    except ValueError as err:
        raise ResultsError(str(err)) from None
    zoo = zoo_row(model)
    m_file = metrics_path(results_dir, dataset, model)
    t_file = train_summary_path(results_dir, dataset, model)
    metrics = _load_json(m_file, "evaluate", METRICS_KEYS)
    train = _load_json(t_file, "train", TRAIN_KEYS)
    _check_model(metrics, model, m_file)
    _check_model(train, model, t_file)

    if metrics.get("checkpoint") and train.get("checkpoint"):
        if Path(metrics["checkpoint"]).resolve() != Path(train["checkpoint"]).resolve():
            log.warning("%s evaluated %s but %s trained %s", m_file, metrics["checkpoint"], t_file, train["checkpoint"])

    acc = {k: round(_num(metrics[k], m_file, k), 2) for k in ACCURACY_COLUMNS[:6]}
    paper = cfg.paper_top1
    eval_failed = int(_num(metrics["failed"], m_file, "failed"))
    if pack is not None:
        val_failed = int(pack["missing"]) + int(pack["failed"]) + eval_failed
        packed = pack.get("packed")
        videos = int(_num(metrics["videos"], m_file, "videos"))
        if packed is not None and videos + eval_failed != int(packed):
            log.warning(
                "%s: %d evaluated + %d failed != %s packed in %s", m_file, videos, eval_failed, packed, pack_file
            )
    else:
        val_failed = eval_failed
    device = str(train["device"]).lower()
    row = {
        "model": model,
        "arch": zoo["arch"],
        "backbone": zoo["backbone"],
        "pretrained": cfg.pretrained or "none",
        "img_size": int(zoo["img_size"]),
        "num_frames": int(zoo["num_frames"]),
        "frame_stride": int(zoo["frame_stride"]),
        "shift_div": int(zoo["shift_div"]),
        "params_m": round(float(zoo["params_m"]), 2),
        "gflops_per_view": float(zoo["gflops_per_view"]),
        "views": int(_num(metrics["views"], m_file, "views")),
        **acc,
        "paper_top1": paper if paper is not None else math.nan,
        "delta_top1": round(acc["top1"] - paper, 2) if paper is not None else math.nan,
        "val_videos": int(_num(metrics["videos"], m_file, "videos")),
        "val_failed": val_failed,
        "epochs": int(_num(train["epochs"], t_file, "epochs")),
        "gpus": int(train["world_size"]) if device.startswith("cuda") else 0,
        "train_hours": round(_num(train["train_hours"], t_file, "train_hours"), 3),
        "checkpoint": str(train["checkpoint"] or ""),
        "checkpoint_sha256": str(train["checkpoint_sha256"] or ""),
    }
    sources = {
        "metrics": str(m_file),
        "train_summary": str(t_file),
        "pack_summary": str(pack_file) if pack is not None else None,
        "zoo": f"tokshift.zoo.get_config({model!r}) / tokshift.flops.zoo_row({model!r})",
        "device": str(train["device"]),
    }
    return row, sources


def collect(dataset: str, models: list[str], results_dir: Path = Path("results")) -> pd.DataFrame:
    """The model-zoo table for ``models`` on ``dataset`` (columns: ``COLUMNS``).

    ``df.attrs`` carries ``dataset`` and ``sources`` (model -> input files) for
    ``write_outputs``.
    """
    if not models:
        raise ResultsError("no models given to collect; name at least one zoo model")
    if len(set(models)) != len(models):
        raise ResultsError(f"models listed more than once: {sorted({m for m in models if models.count(m) > 1})}")
    results_dir = Path(results_dir)
    pack_file = pack_summary_path(results_dir, dataset)
    pack = _load_json(pack_file, "pack_shard", PACK_KEYS) if pack_file.is_file() else None
    rows, sources = [], {}
    for model in models:
        row, src = _model_row(dataset, model, results_dir, pack, pack_file)
        rows.append(row)
        sources[model] = src
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df.attrs["dataset"] = dataset
    df.attrs["sources"] = sources
    return df


def _fmt(value: Any, digits: int | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if digits is not None:
        return f"{float(value):.{digits}f}"
    return str(value).replace("|", "\\|")


def _fmt_gflops(g: float) -> str:
    return f"{g:.1f}" if g >= 10 else f"{g:.4g}"


def to_markdown(df: pd.DataFrame) -> str:
    """A readable markdown table (the CSV keeps every column)."""
    dataset = df.attrs.get("dataset", "")
    header = [
        "Model",
        "Arch",
        "Backbone",
        "Pretrained",
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
    ]
    lines = [
        f"# Model zoo: {dataset}" if dataset else "# Model zoo",
        "",
        "Accuracies in percent. Top-1/top-5 fuse the views by averaging logits; the softmax column "
        "averages probabilities instead; the 1- and 3-view columns score the same videos with 1 and 3 "
        "views. Δ is our top-1 minus the paper's. Failed videos are missing, unpackable or unreadable "
        "validation videos; they are not counted in the accuracy. Every number is traced to its input "
        "file in `model_zoo.sources.json`.",
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
            _fmt(r["pretrained"]),
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
    fig.savefig(out_plot, bbox_inches="tight")


def sources_path(out_csv: Path) -> Path:
    """``model_zoo.csv`` -> ``model_zoo.sources.json`` beside it."""
    return out_csv.with_name(out_csv.stem + ".sources.json")


def write_outputs(df: pd.DataFrame, out_csv: Path, out_md: Path, out_plot: Path) -> list[Path]:
    """Write the CSV, markdown, plot and ``<csv stem>.sources.json``; return their paths."""
    out_csv, out_md, out_plot = Path(out_csv), Path(out_md), Path(out_plot)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ResultsError(f"the table lacks column(s) {missing}; build it with tokshift.results.collect")
    for p in (out_csv, out_md, out_plot):
        p.parent.mkdir(parents=True, exist_ok=True)
    df.loc[:, list(COLUMNS)].to_csv(out_csv, index=False, na_rep="")
    out_md.write_text(to_markdown(df))
    plot_accuracy_vs_gflops(df, out_plot)
    src = sources_path(out_csv)
    src.write_text(
        json.dumps(
            {"dataset": df.attrs.get("dataset"), "models": df.attrs.get("sources", {}), "columns": COLUMN_SOURCES},
            indent=2,
        )
        + "\n"
    )
    log.info("wrote %s, %s, %s, %s", out_csv, out_md, out_plot, src)
    return [out_csv, out_md, out_plot, src]
