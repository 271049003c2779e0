"""Collect per-model training and evaluation outputs into the model-zoo table.

The caller names every input file (the workflow passes its rule's inputs), so this module
knows no folder layout. Every number in ``model_zoo.csv`` comes from a file: evaluation
metrics from each ``metrics.json`` (rule ``evaluate``), training facts from each
``train_summary.json`` (rule ``train``), the validation packing counts from the split's
``summary.json`` (rule ``summarize_frames``) when given, and architecture/cost/paper numbers
from the zoo. Files are matched to a model by the ``model`` name recorded inside them, and
checkpoints by their sha256 against ``train_summary.json``; rows follow the order of the
metrics files. The files used per model go to ``model_zoo.sources.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokshift.errors import BadInput
from tokshift.provenance import devices_summary

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

# The results table interface: these columns, in this order.
COLUMNS: tuple[str, ...] = (
    "model",
    "arch",
    "backbone",
    "init_from",
    "img_size",
    "num_frames",
    "frame_stride",
    "shift_div",
    "params_m",
    "gflops_per_view",
    "views",
    "eval_mode",
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
    "global_batch",
    "gpus",
    "train_hours",
    "checkpoint",
    "checkpoint_sha256",
    "checkpoint_source",
    "trained_on",
    "train_commit",
    "train_torch",
    "eval_commit",
    "eval_torch",
    "val_only_classes",
    "train_only_classes",
    "top1_trained_classes",
    "projected_train_hours",
    "train_gpu_hours",
    "projected_train_gpu_hours",
)

# Counts that are empty (not 0) where the evaluation could not tell: written as integers.
COUNT_COLUMNS = ("val_only_classes", "train_only_classes")

METRICS_KEYS: tuple[str, ...] = (
    "model",
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
    "model",
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
    "eval_mode": "metrics:mode: faithful (the original's test transform and fp32) or fast; fast when absent",
    "val_failed": "pack_summary:missing + pack_summary:failed + metrics:failed (metrics:failed alone "
    "when there is no pack summary)",
    "init_from": "train_summary:init_from (the backbone's name when it is the zoo's ImageNet-21k weights file)",
    "epochs": "train_summary:epochs",
    "global_batch": "train_summary:global_batch (clips per optimizer step: batch_size × processes × accum_steps)",
    "gpus": "train_summary:world_size when train_summary:device is cuda, else 0",
    "train_hours": "train_summary:train_hours",
    "checkpoint": "train_summary:checkpoint",
    "checkpoint_sha256": "train_summary:checkpoint_sha256, checked against metrics:checkpoint_sha256 and "
    "against the sha256 of the model's checkpoint file (when given)",
    "checkpoint_source": "'trained' for a trained model; for a released one the URL or path it was fetched "
    "from (--released-source), else the source file its model.pt records",
    "trained_on": "train_summary:provenance:devices, counted per name (the device of every rank)",
    "train_commit": "train_summary:provenance:tokshift:commit (12 characters, +dirty when tracked files differed); "
    "every attempt of a resumed training is listed in train_summary:provenance:attempts",
    "train_torch": "train_summary:provenance:software:torch",
    "eval_commit": "metrics:provenance:tokshift:commit (as train_commit)",
    "eval_torch": "metrics:provenance:software:torch",
    "val_only_classes": "metrics:class_coverage:val_only, counted: classes with validation videos but no training "
    "video (scored, never learnt); empty when the checkpoint records no training videos per class",
    "train_only_classes": "metrics:class_coverage:train_only, counted: classes with training videos but no "
    "validation video (not measured); empty as val_only_classes",
    "top1_trained_classes": "metrics:class_coverage:top1_trained_classes: top-1 over the videos of the classes "
    "with training videos; empty as val_only_classes",
    "projected_train_hours": "preflight:prices[model]:train_hours (snakemake preflight); empty without a preflight",
    "train_gpu_hours": "train_hours × gpus (0 for a CPU training)",
    "projected_train_gpu_hours": "preflight:prices[model]:train_gpu_hours; empty without a preflight",
}

# A released checkpoint's row: what differs from COLUMN_SOURCES.
RELEASED_COLUMN_SOURCES: dict[str, str] = {
    "init_from": "unknown (not recorded in the original's checkpoint)",
    "epochs": "model.pt:epoch (the epoch the original saved)",
    "global_batch": "unknown (not recorded in the original's checkpoint)",
    "gpus": "unknown",
    "train_hours": "unknown",
    "trained_on": "unknown (not recorded in the original's checkpoint)",
    "train_commit": "unknown (trained by the original code)",
    "train_torch": "unknown",
    "checkpoint": "the model.pt file given",
    "checkpoint_sha256": "sha256 of the model.pt file given, checked against metrics:checkpoint_sha256",
    "projected_train_hours": "none (not trained here)",
    "train_gpu_hours": "unknown",
    "projected_train_gpu_hours": "none (not trained here)",
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


class ResultsError(BadInput):
    """An input of the results table is missing or malformed."""


class MissingResultError(ResultsError, FileNotFoundError):
    """A per-model output file does not exist yet."""


def _load_json(path: Path, rule: str, required: tuple[str, ...]) -> dict[str, Any]:
    """Read a JSON object, naming the file and the rule that makes it on any problem."""
    if path.is_dir():
        raise ResultsError(f"{path} is a directory; give the JSON file written by the `{rule}` rule")
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


def _by_model(paths: Sequence[PathLike], rule: str, required: tuple[str, ...]) -> dict[str, tuple[Path, dict]]:
    """Load each file and key it by the model recorded inside; a model twice is an error."""
    out: dict[str, tuple[Path, dict]] = {}
    for p in map(Path, paths):
        data = _load_json(p, rule, required)
        model = str(data["model"])
        if model in out:
            raise ResultsError(f"{out[model][0]} and {p} both hold model {model!r}; give one file per model")
        out[model] = (p, data)
    return out


def _match_checkpoints(checkpoints: Sequence[PathLike], trains: dict[str, tuple[Path, dict]]) -> dict[str, Path]:
    """Each model's checkpoint file, found by the sha256 its train summary records."""
    from tokshift.fileio import sha256_file

    by_sha: dict[str, Path] = {}
    for p in map(Path, checkpoints):
        if p.is_dir():
            raise ResultsError(f"checkpoint {p} is a directory; give the model.pt file written by the `train` rule")
        if not p.is_file():
            raise MissingResultError(f"checkpoint {p} is missing; it is written by the `train` rule")
        by_sha[sha256_file(p)] = p
    found: dict[str, Path] = {}
    for model, (t_file, train) in trains.items():
        sha = str(train["checkpoint_sha256"] or "")
        if sha not in by_sha:
            raise ResultsError(
                f"no checkpoint among {[str(p) for p in map(Path, checkpoints)]} has the sha256 {sha[:12]}... "
                f"that {t_file} records for model {model!r}: the checkpoint changed after training; "
                "rerun the `train` rule for this model"
            )
        found[model] = by_sha.pop(sha)
    if by_sha:
        raise ResultsError(f"checkpoint(s) {sorted(map(str, by_sha.values()))} belong to no given train summary")
    return found


def _started_from(train: dict[str, Any], backbone: str | None) -> str:
    """What the training started from: the ImageNet-21k backbone's name, or the file it fine-tuned.

    Summaries written before `init_from` was named so record the file as `pretrained`.
    """
    path = train.get("init_from", train.get("pretrained"))
    if not path:
        return "none"
    if backbone and Path(str(path)).stem == backbone:
        return backbone
    return str(path)


def _provenance_columns(prefix: str, block: dict[str, Any] | None) -> dict[str, Any]:
    """`<prefix>_commit` and `<prefix>_torch` from an output's provenance block ('unknown' when it has none)."""
    from tokshift.provenance import short_commit

    software = (block or {}).get("software") or {}
    return {
        f"{prefix}_commit": short_commit((block or {}).get("tokshift")),
        f"{prefix}_torch": str(software.get("torch") or "unknown"),
    }


def _trained_columns(
    model: str, m_file: Path, metrics: dict[str, Any], t_file: Path, train: dict[str, Any]
) -> dict[str, Any]:
    """The columns a train summary gives (training facts and the checkpoint), checked against the metrics."""
    from tokshift.zoo import get_config

    try:
        backbone = get_config(model).imagenet_weights
    except ValueError as err:
        raise ResultsError(f"{m_file}: {err}") from None
    evaluated, trained = metrics.get("checkpoint_sha256"), train["checkpoint_sha256"]
    if evaluated and trained and evaluated != trained:
        raise ResultsError(
            f"{m_file} evaluated a checkpoint with sha256 {str(evaluated)[:12]}... but {t_file} records "
            f"{str(trained)[:12]}...: the metrics are stale; rerun the `evaluate` rule for {model!r}"
        )
    device = str(train["device"]).lower()
    return {
        "init_from": _started_from(train, backbone),
        "epochs": int(_num(train["epochs"], t_file, "epochs")),
        # Summaries written before the key existed leave the cell empty.
        "global_batch": int(_num(train["global_batch"], t_file, "global_batch"))
        if train.get("global_batch") is not None
        else None,
        "gpus": int(train["world_size"]) if device.startswith("cuda") else 0,
        "train_hours": round(_num(train["train_hours"], t_file, "train_hours"), 3),
        "checkpoint": str(train["checkpoint"] or ""),
        "checkpoint_sha256": str(trained or ""),
        "checkpoint_source": "trained",
        "trained_on": devices_summary((train.get("provenance") or {}).get("devices") or []),
        **_provenance_columns("train", train.get("provenance")),
    }


def _model_row(
    model: str,
    m_file: Path,
    metrics: dict[str, Any],
    origin: dict[str, Any],
    pack: dict[str, Any] | None,
    pack_file: Path | None,
    projection: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One table row from a model's metrics, where its checkpoint came from, the packing counts and the zoo."""
    from tokshift.flops import zoo_row
    from tokshift.zoo import get_config

    try:
        cfg = get_config(model)
    except ValueError as err:
        raise ResultsError(f"{m_file}: {err}") from None
    zoo = zoo_row(model)

    acc = {k: round(_num(metrics[k], m_file, k), 2) for k in ACCURACY_COLUMNS[:6]}
    paper = cfg.paper_top1
    eval_failed = int(_num(metrics["failed"], m_file, "failed"))
    videos = int(_num(metrics["videos"], m_file, "videos"))
    if pack is not None:
        val_failed = int(pack["missing"]) + int(pack["failed"]) + eval_failed
        packed = pack.get("packed")
        if packed is not None and videos + eval_failed != int(packed):
            log.warning(
                "%s: %d evaluated + %d failed != %s packed in %s", m_file, videos, eval_failed, packed, pack_file
            )
    else:
        val_failed = eval_failed
    return {
        "model": model,
        "arch": zoo["arch"],
        "backbone": zoo["backbone"],
        "init_from": origin["init_from"],
        "img_size": int(zoo["img_size"]),
        "num_frames": int(zoo["num_frames"]),
        "frame_stride": int(zoo["frame_stride"]),
        "shift_div": int(zoo["shift_div"]),
        "params_m": round(float(zoo["params_m"]), 2),
        "gflops_per_view": float(zoo["gflops_per_view"]),
        "views": int(_num(metrics["views"], m_file, "views")),
        "eval_mode": str(metrics.get("mode", "fast")),
        **acc,
        "paper_top1": paper if paper is not None else math.nan,
        "delta_top1": round(acc["top1"] - paper, 2) if paper is not None else math.nan,
        "val_videos": videos,
        "val_failed": val_failed,
        **{k: origin[k] for k in ("epochs", "global_batch", "gpus", "train_hours", "checkpoint", "checkpoint_sha256")},
        "checkpoint_source": origin["checkpoint_source"],
        **{k: origin[k] for k in ("trained_on", "train_commit", "train_torch")},
        **_provenance_columns("eval", metrics.get("provenance")),
        **_coverage_columns(metrics.get("class_coverage"), m_file),
        **_cost_columns(origin, projection),
    }


def _cost_columns(origin: dict[str, Any], projection: dict[str, Any] | None) -> dict[str, Any]:
    """Measured GPU-hours next to the preflight's projection (tokshift.preflight), to see how good it was."""
    hours, gpus = origin["train_hours"], origin["gpus"]
    measured = round(hours * gpus, 3) if gpus is not None and not math.isnan(hours) else math.nan
    projected = projection or {}
    return {
        "projected_train_hours": round(float(projected["train_hours"]), 3) if projected else math.nan,
        "train_gpu_hours": measured,
        "projected_train_gpu_hours": round(float(projected["train_gpu_hours"]), 3) if projected else math.nan,
    }


def read_projections(path: PathLike | None) -> dict[str, dict[str, Any]]:
    """Each model's price in a preflight report (`snakemake preflight`), by model; {} without one."""
    if path is None or str(path) == "":
        return {}
    file = Path(path)
    data = _load_json(file, "preflight", ("prices",))
    return {str(p["model"]): p for p in data["prices"]}


def _coverage_columns(block: dict[str, Any] | None, m_file: Path) -> dict[str, Any]:
    """The one-split class counts and the top-1 without the untrained classes (None: not known)."""
    if not block:  # a checkpoint without its training videos per class, or metrics from before the block
        return {"val_only_classes": None, "train_only_classes": None, "top1_trained_classes": math.nan}
    if not isinstance(block.get("val_only"), list) or not isinstance(block.get("train_only"), list):
        raise ResultsError(
            f"{m_file}: class_coverage lacks its val_only and train_only lists; rerun the `evaluate` rule"
        )
    top1 = block.get("top1_trained_classes")
    return {
        "val_only_classes": len(block["val_only"]),
        "train_only_classes": len(block["train_only"]),
        "top1_trained_classes": round(_num(top1, m_file, "class_coverage.top1_trained_classes"), 2)
        if top1 is not None
        else math.nan,
    }


def collect(
    dataset: str,
    metrics: Sequence[PathLike],
    train_summaries: Sequence[PathLike],
    checkpoints: Sequence[PathLike] = (),
    val_summary: PathLike | None = None,
    preflight: PathLike | None = None,
) -> pd.DataFrame:
    """The model-zoo table from exactly these files (columns: ``COLUMNS``, one row per metrics file).

    Every model needs one metrics file and one train summary; ``checkpoints``, when given,
    must hold each model's checkpoint (verified by sha256). ``df.attrs`` carries ``dataset``
    and ``sources`` (model -> the files its row came from) for ``write_outputs``.
    """
    import pandas as pd

    if not metrics:
        raise ResultsError("no metrics files given to collect; name at least one (rule `evaluate` writes them)")
    evals = _by_model(metrics, "evaluate", METRICS_KEYS)
    trains = _by_model(train_summaries, "train", TRAIN_KEYS)
    if set(evals) != set(trains):
        no_train = sorted(set(evals) - set(trains))
        no_eval = sorted(set(trains) - set(evals))
        raise ResultsError(
            "metrics files and train summaries must name the same models: "
            + "; ".join(
                part
                for part in (
                    f"no train summary for {no_train}" if no_train else "",
                    f"no metrics file for {no_eval}" if no_eval else "",
                )
                if part
            )
        )
    ckpts = _match_checkpoints(checkpoints, trains) if checkpoints else {}
    pack_file = Path(val_summary) if val_summary is not None else None
    pack = _load_json(pack_file, "summarize_frames", PACK_KEYS) if pack_file is not None else None
    projections = read_projections(preflight)
    rows, sources = [], {}
    for model, (m_file, m_data) in evals.items():
        t_file, t_data = trains[model]
        origin = _trained_columns(model, m_file, m_data, t_file, t_data)
        rows.append(_model_row(model, m_file, m_data, origin, pack, pack_file, projections.get(model)))
        sources[model] = {
            "preflight": str(preflight) if model in projections else None,
            "metrics": str(m_file),
            "train_summary": str(t_file),
            "checkpoint": str(ckpts[model]) if model in ckpts else None,
            "pack_summary": str(pack_file) if pack_file is not None else None,
            "zoo": f"tokshift.zoo.get_config({model!r}) / tokshift.flops.zoo_row({model!r})",
            "device": str(t_data["device"]),
            "train_provenance": t_data.get("provenance"),
            "eval_provenance": m_data.get("provenance"),
        }
    df = pd.DataFrame(rows, columns=list(COLUMNS)).astype({c: "Int64" for c in COUNT_COLUMNS})
    df.attrs["dataset"] = dataset
    df.attrs["sources"] = sources
    return df


def _released_checkpoint(path: Path) -> tuple[str, dict[str, Any], str]:
    """(model, model.pt contents, sha256) of a checkpoint converted by `tokshift import-original`."""
    from tokshift.checkpoints import CheckpointFormatError, read_torch_file
    from tokshift.fileio import sha256_file

    if not path.is_file():
        raise MissingResultError(f"released checkpoint {path} is missing; it is written by `tokshift import-original`")
    try:
        data = read_torch_file(path)
    except CheckpointFormatError as err:
        raise ResultsError(str(err)) from None
    if not isinstance(data, dict) or "source_sha256" not in data or "config" not in data:
        raise ResultsError(
            f"{path} records no source checkpoint; give a model.pt written by `tokshift import-original`"
        )
    return str(data["config"]["name"]), data, sha256_file(path)


def collect_released(
    dataset: str,
    metrics: Sequence[PathLike],
    released: Sequence[PathLike],
    val_summary: PathLike | None = None,
    sources: dict[str, str] | None = None,
) -> pd.DataFrame:
    """The table of released checkpoints: one row per metrics file, the model.pt of each from ``released``.

    Each model.pt is one `tokshift import-original` wrote; its sha256 must be the one the
    metrics evaluated. ``sources`` (model -> URL or path) names where each checkpoint was
    fetched from in ``checkpoint_source``; without it the source file its model.pt records.
    """
    import pandas as pd

    if not metrics:
        raise ResultsError("no metrics files given to collect; name at least one (rule `evaluate` writes them)")
    evals = _by_model(metrics, "evaluate", METRICS_KEYS)
    ckpts: dict[str, tuple[Path, dict[str, Any], str]] = {}
    for p in map(Path, released):
        model, data, sha = _released_checkpoint(p)
        if model in ckpts:
            raise ResultsError(f"{ckpts[model][0]} and {p} both hold model {model!r}; give one file per model")
        ckpts[model] = (p, data, sha)
    if set(evals) != set(ckpts):
        raise ResultsError(
            f"metrics files name models {sorted(evals)} but the released checkpoints hold {sorted(ckpts)}; "
            "give one of each per model"
        )
    unknown = sorted(set(sources or {}) - set(evals))
    if unknown:
        raise ResultsError(f"sources given for model(s) {unknown} that have no metrics file")
    pack_file = Path(val_summary) if val_summary is not None else None
    pack = _load_json(pack_file, "summarize_frames", PACK_KEYS) if pack_file is not None else None
    rows, all_sources = [], {}
    for model, (m_file, m_data) in evals.items():
        c_file, c_data, sha = ckpts[model]
        evaluated = m_data.get("checkpoint_sha256")
        if evaluated and evaluated != sha:
            raise ResultsError(
                f"{m_file} evaluated a checkpoint with sha256 {str(evaluated)[:12]}... but {c_file} has "
                f"{sha[:12]}...: the metrics are stale; rerun the evaluation of {model!r}"
            )
        epoch = c_data.get("epoch")
        origin = {
            "init_from": None,
            "epochs": int(epoch) if epoch is not None else None,
            "global_batch": None,
            "gpus": None,
            "train_hours": math.nan,
            "checkpoint": str(c_file),
            "checkpoint_sha256": sha,
            "checkpoint_source": (sources or {}).get(model) or str(c_data["source"]),
            "trained_on": "unknown",
            "train_commit": "unknown",
            "train_torch": "unknown",
        }
        rows.append(_model_row(model, m_file, m_data, origin, pack, pack_file))
        all_sources[model] = {
            "metrics": str(m_file),
            "checkpoint": str(c_file),
            "source": str(c_data["source"]),
            "source_sha256": str(c_data["source_sha256"]),
            "pack_summary": str(pack_file) if pack_file is not None else None,
            "zoo": f"tokshift.zoo.get_config({model!r}) / tokshift.flops.zoo_row({model!r})",
            "import_provenance": c_data.get("provenance"),
            "eval_provenance": m_data.get("provenance"),
        }
    df = pd.DataFrame(rows, columns=list(COLUMNS)).astype({c: "Int64" for c in COUNT_COLUMNS})
    df.attrs["dataset"] = dataset
    df.attrs["sources"] = all_sources
    df.attrs["column_sources"] = {**COLUMN_SOURCES, **RELEASED_COLUMN_SOURCES}
    return df
