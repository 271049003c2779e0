"""`tokshift export`: a model.pt written as an export folder (tokshift.export, docs/export.md).

The `hub` format adds a model card whose numbers are the results table's row of this very
checkpoint (by sha256), copied as the CSV spells them; without such a row the card says why
and shows none. The folder is written beside its place and renamed into it, so a refused or
failed export leaves nothing behind.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokshift.checkpoints import EXPORT, TOKSHIFT, open_checkpoint
from tokshift.engine.loading import trained_from_checkpoint
from tokshift.errors import BadInput, InputMissing
from tokshift.export import (
    CARD_FILE,
    CONFIG_FILE,
    EXPORT_FORMAT,
    FORMAT_VERSION,
    FORMATS,
    INPUT_LAYOUT,
    WEIGHTS_FILE,
    export_config,
    find_export,
    safetensors_bytes,
)
from tokshift.fileio import (
    atomic_folder,
    atomic_write_bytes,
    atomic_write_text,
    refuse_output_over_input,
    sha256_file,
)

__all__ = ["TABLE_FILE", "Exported", "default_table", "export_model", "model_card", "table_row"]

TABLE_FILE = "model_zoo.csv"
_DATASETS = {"k400": "Kinetics-400", "demo": "the generated demo clips"}
# The table's columns the model card shows.
_CARD_COLUMNS = ("model", "views", "top1", "top5", "top1_1view", "gflops_per_view", "params_m", "checkpoint_sha256")


@dataclass(frozen=True)
class Exported:
    out_dir: Path
    files: list[str]
    model: str
    weights_sha256: str
    checkpoint_sha256: str
    table: Path | None  # the results table the card read (hub format)
    no_results: str | None  # why the card has no numbers (hub format), None when it has them


def default_table(checkpoint: Path) -> Path | None:
    """The results table of the workflow layout: `<dataset>/model_zoo.csv` for `<dataset>/train/<model>/model.pt`,
    `released/model_zoo.csv` for `released/<model>/model.pt` (the nearer of the two that exists)."""
    for folder in Path(os.path.abspath(checkpoint)).parents[1:3]:
        if (folder / TABLE_FILE).is_file():
            return folder / TABLE_FILE
    return None


def table_row(table: Path, model: str, checkpoint_sha256: str) -> tuple[dict[str, str] | None, str | None]:
    """(the table's row of this checkpoint as written, None) or (None, why there is none).

    The cells are kept as the CSV spells them, so the card shows the table's numbers exactly.
    """
    try:
        with open(table, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = reader.fieldnames or []
    except FileNotFoundError:
        raise InputMissing(f"results table {table} not found; tokshift collect writes it") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BadInput(
            f"results table {table} cannot be read ({exc}); give the model_zoo.csv of tokshift collect"
        ) from None
    lacking = [c for c in _CARD_COLUMNS if c not in columns]
    if lacking:
        raise BadInput(
            f"results table {table} lacks the column(s) {lacking}; give the model_zoo.csv that tokshift collect writes"
        )
    mine = [r for r in rows if r["model"] == model]
    if not mine:
        return None, f"{table} has no row for {model}: the model was not evaluated and collected yet"
    for row in mine:
        if row["checkpoint_sha256"] == checkpoint_sha256:
            return row, None
    recorded = mine[0]["checkpoint_sha256"]
    other = f"sha256 {recorded[:12]}..." if recorded else "no sha256 recorded"
    return None, (
        f"the row for {model} in {table} is of another checkpoint ({other}, this one is "
        f"{checkpoint_sha256[:12]}...): evaluate and collect this model again"
    )


def _cell(row: Mapping[str, str], key: str) -> str:
    return row.get(key) or "—"


def _provenance_rows(block: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    from tokshift.provenance import devices_summary, short_commit

    if not block:
        return [("provenance", "not recorded in the checkpoint")]
    code = block.get("tokshift") or {}
    software = block.get("software") or {}
    rows = [
        ("code", f"tokshift {code.get('version') or 'unknown'}, commit {short_commit(code)}"),
        ("torch", str(software.get("torch") or "unknown")),
        ("trained on", devices_summary(block.get("devices") or [])),
    ]
    slurm = block.get("slurm") or {}
    if slurm.get("job_id"):
        rows.append(("SLURM job", str(slurm["job_id"])))
    if block.get("ended"):
        rows.append(("finished", str(block["ended"])))
    return rows


def _table(rows: list[tuple[str, str]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def model_card(
    config: Mapping[str, Any],
    out_dir: str,
    row: Mapping[str, str] | None,
    no_results: str | None,
    table: Path | None,
    params: int,
) -> str:
    """README.md of a hub export: what the model is, its numbers from the table row, provenance, how to load it."""
    cfg = config["config"]
    name, dataset = cfg["name"], cfg["dataset"]
    training = config.get("training") or {}
    lines = [
        "---",
        "tags:",
        "- video-classification",
        "- tokshift",
        f"- {dataset}",
        "pipeline_tag: video-classification",
        "---",
        "",
        f"# {name}",
        "",
        f"A {'TokShift' if cfg['arch'] == 'tokshift' else 'per-frame ViT'} video classifier ({cfg['backbone']} "
        f"backbone) trained on {_DATASETS.get(dataset, dataset)} ({cfg['num_classes']} classes) with tokshift. "
        f"The class names, in the order of the head's outputs, are `label_names` in {CONFIG_FILE}.",
        "",
        "## Results",
        "",
    ]
    if row is not None:
        views = row["views"]
        lines += [
            f"From `{table}`, this checkpoint's row:",
            "",
            *_table(
                [
                    (f"top-1, {views} views", _cell(row, "top1")),
                    (f"top-5, {views} views", _cell(row, "top5")),
                    ("top-1, 1 view", _cell(row, "top1_1view")),
                    ("GFLOPs per view", _cell(row, "gflops_per_view")),
                    ("parameters (M)", _cell(row, "params_m")),
                    ("validation videos", _cell(row, "val_videos")),
                    ("evaluation", _cell(row, "eval_mode")),
                ]
            ),
        ]
    else:
        lines += [
            f"No results: {no_results}. Evaluate the model (`tokshift evaluate`), collect the table "
            "(`tokshift collect`) and export again with `--results model_zoo.csv`.",
            "",
            *_table([("parameters (M)", f"{params / 1e6:.2f} (counted from the weights)")]),
        ]
    init = training.get("init_from")
    init_sha = training.get("init_from_sha256")
    lines += [
        "",
        "## Model",
        "",
        *_table(
            [
                ("architecture", f"{cfg['arch']}, {cfg['backbone']}, shift_div {cfg['shift_div']}"),
                ("frames × stride", f"{cfg['num_frames']} × {cfg['frame_stride']}"),
                ("image size", str(cfg["img_size"])),
                (
                    "input",
                    f"float32 ({INPUT_LAYOUT}) = (B, {cfg['num_frames']}, 3, {cfg['img_size']}, "
                    f"{cfg['img_size']}), RGB, (x / 255 - 0.5) / 0.5",
                ),
                ("output", "(B, classes) logits, the mean over the frames"),
                ("epochs", str(training.get("epoch", "—"))),
                ("learning rate", str(training.get("lr", cfg["lr"]))),
                ("global batch", str(training.get("global_batch", "—"))),
                ("seed", str(training.get("seed", "—"))),
                ("started from", f"{init} (sha256 {init_sha})" if init else "random weights"),
            ]
        ),
        "",
        "## Provenance",
        "",
        *_table(
            [
                *_provenance_rows(config.get("provenance")),
                ("model.pt sha256", str(config["checkpoint_sha256"])),
                (f"{WEIGHTS_FILE} sha256", str(config["weights"]["sha256"])),
            ]
        ),
        "",
        "## Use",
        "",
        "With timm (the model takes a clip, not an image: see the input above):",
        "",
        "```python",
        "import timm",
        "import tokshift.timm  # registers the zoo's models with timm",
        "",
        f'model = timm.create_model("{name}", pretrained=True, '
        f'pretrained_cfg_overlay=dict(file="{out_dir}/{WEIGHTS_FILE}"))',
        "```",
        "",
        "With tokshift (the 30-view evaluation's own code):",
        "",
        "```python",
        "import tokshift",
        "",
        f'm = tokshift.load("{out_dir}")',
        'print(tokshift.predict(m, "video.mp4"))',
        "```",
        "",
        f"or `tokshift predict video.mp4 --checkpoint {out_dir}`.",
        "",
    ]
    return "\n".join(lines)


def _check_out_dir(src: Path, out: Path) -> None:
    """Refuse an output folder that holds the input, lies inside an input folder, or holds other files."""
    s, o = src.resolve(), out.resolve()
    if s == o or s.is_relative_to(o):
        raise BadInput(
            f"--out-dir {out} contains the input {src}; export to a folder of its own, e.g. {src.parent}/export"
        )
    found = find_export(src)
    if found is not None and o.is_relative_to(found[0].resolve()):
        raise BadInput(f"--out-dir {out} is inside the input export {found[0]}; export to a folder beside it")
    if not out.exists():
        return
    if not out.is_dir():
        raise BadInput(f"--out-dir {out} is a file; give a folder (it is created)")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if find_export(out) is not None and set(entries) <= {WEIGHTS_FILE, CONFIG_FILE, CARD_FILE}:
        return  # an earlier export: replaced whole
    raise BadInput(
        f"--out-dir {out} already holds {', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''} and is no "
        "tokshift export; give a new or empty folder, or an earlier export's folder to replace"
    )


def export_model(
    checkpoint: str | Path, out_dir: str | Path, fmt: str = "safetensors", results: str | Path | None = None
) -> Exported:
    """Write `out_dir` with the weights of `checkpoint` (a tokshift model.pt or an export) as
    model.safetensors and its config.json; `fmt` "hub" adds a model card from `results` (a
    model_zoo.csv; by default the workflow's table of the model). The folder appears whole or
    not at all, and an earlier export there is replaced."""
    if fmt not in FORMATS:
        raise BadInput(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    src, out = Path(checkpoint), Path(out_dir)
    if not src.exists():
        raise InputMissing(f"checkpoint {src} not found; train the model first (tokshift train)")
    _check_out_dir(src, out)
    refuse_output_over_input(out, [results], name="--out-dir", folder=True)  # the table the card reads
    ckpt = open_checkpoint(src)
    if ckpt.kind not in (TOKSHIFT, EXPORT):
        raise BadInput(
            f"{src} is a {ckpt.description}, which records no classes or config; export a tokshift model.pt "
            "(tokshift import-original converts an original .pth into one)"
        )
    trained_from_checkpoint(ckpt, torch.device("cpu"))  # the weights must fit their own config and classes
    meta = ckpt.meta
    if ckpt.kind == EXPORT:
        checkpoint_sha256 = str(meta.get("checkpoint_sha256") or "")
    else:
        checkpoint_sha256 = sha256_file(src)
    tensors = {k: v.detach().cpu().contiguous() for k, v in ckpt.weights.items()}
    name = str(meta["config"]["name"])
    data = safetensors_bytes(
        tensors,
        {
            "format": "pt",
            "tokshift_format": EXPORT_FORMAT,
            "tokshift_format_version": str(FORMAT_VERSION),
            "model": name,
            "checkpoint_sha256": checkpoint_sha256,
        },
    )
    weights_sha256 = hashlib.sha256(data).hexdigest()
    config = export_config(meta, weights_sha256, checkpoint_sha256)
    files = [WEIGHTS_FILE, CONFIG_FILE]
    table, row, no_results = None, None, None
    card = None
    if fmt == "hub":
        table = Path(results) if results is not None else default_table(src)
        if table is None:
            no_results = f"no {TABLE_FILE} next to the workflow's folders of {src} (give one with --results)"
        else:
            row, no_results = table_row(table, name, checkpoint_sha256)
        params = sum(int(t.numel()) for t in tensors.values())
        card = model_card(config, str(out).rstrip("/") or ".", row, no_results, table, params)
        files.append(CARD_FILE)
    with atomic_folder(out) as tmp:
        atomic_write_bytes(tmp / WEIGHTS_FILE, data)
        atomic_write_text(tmp / CONFIG_FILE, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        if card is not None:
            atomic_write_text(tmp / CARD_FILE, card)
    return Exported(out, files, name, weights_sha256, checkpoint_sha256, table, no_results)
