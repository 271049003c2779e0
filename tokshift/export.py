"""`tokshift export`: a trained model as files anyone can read without unpickling or tokshift's internals.

A model.pt is a pickled dict. An export folder holds the weights as safetensors (reading them
runs no code), a `config.json` with everything needed to rebuild and use the model (zoo config,
class names in head order, input layout and normalisation, the training recipe, the checksum of
the model.pt it came from and that model.pt's provenance) and, in the `hub` format, a model card
`README.md` whose numbers come from the results table. `config.json` also carries timm's keys
(`architecture`, `num_classes`, `label_names`, `pretrained_cfg`), so timm reads the folder too.
`tokshift.checkpoints.open_checkpoint` reads an export like a model.pt (docs/export.md).

Only the standard library is imported at the top: the CLI's --help imports this module.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokshift.errors import BadInput, DataDamaged, InputMissing

__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "DESCRIPTION",
    "EXPORT_FORMAT",
    "FORMATS",
    "FORMAT_VERSION",
    "TABLE_FILE",
    "WEIGHTS_FILE",
    "Exported",
    "export_model",
    "export_weights_file",
    "find_export",
    "read_export",
]

EXPORT_FORMAT = "tokshift-export"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
TABLE_FILE = "model_zoo.csv"
FORMATS = ("safetensors", "hub")
DESCRIPTION = "tokshift export (safetensors + config.json)"
# tokshift.data.transforms.normalize: (x / 255 - 0.5) / 0.5 per RGB channel.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
# What VideoVisionTransformer.forward takes and returns.
INPUT_LAYOUT = "B,T,3,H,W"
# A model.pt's entries that config.json holds under their own keys; the rest go to "training".
_OWN_KEYS = ("model", "config", "classes", "provenance", "checkpoint_sha256", "export")
# A safetensors file starts with the length of its JSON header; anything longer is no header.
_MAX_HEADER = 100 << 20
_DATASETS = {"k400": "Kinetics-400", "demo": "the generated demo clips"}
# The table's columns the model card shows.
_CARD_COLUMNS = ("model", "views", "top1", "top5", "top1_1view", "gflops_per_view", "params_m", "checkpoint_sha256")


# --------------------------------------------------------------------------- recognising an export


def _export_config(path: Path) -> dict[str, Any] | None:
    """The content of `path` when it is an export's config.json, else None; a newer format is refused."""
    try:
        with open(path, "rb") as fh:
            if fh.read(1) != b"{":
                return None
            fh.seek(0)
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        return None
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BadInput(
            f"{path} is a tokshift export of format version {version!r}; this tokshift reads versions up to "
            f"{FORMAT_VERSION}: upgrade tokshift, or export the model.pt again with this one"
        )
    return data


def is_safetensors(path: Path) -> bool:
    """Whether the file's bytes are a safetensors file (a little-endian header length, then a JSON object)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= min(size - 8, _MAX_HEADER)


def find_export(path: str | Path) -> tuple[Path, dict[str, Any], Path] | None:
    """(folder, config.json content, weights file) when `path` is an export folder, its config.json or
    its weights (told by content), else None."""
    path = Path(path)
    if path.is_dir():
        config = _export_config(path / CONFIG_FILE) if (path / CONFIG_FILE).is_file() else None
        if config is None:
            return None
        return path, config, path / str((config.get("weights") or {}).get("file") or WEIGHTS_FILE)
    if not path.is_file():
        return None
    config = _export_config(path)
    if config is not None:
        return path.parent, config, path.parent / str((config.get("weights") or {}).get("file") or WEIGHTS_FILE)
    if is_safetensors(path):
        beside = path.parent / CONFIG_FILE
        config = _export_config(beside) if beside.is_file() else None
        if config is None:
            raise BadInput(
                f"{path} is a safetensors file without the {CONFIG_FILE} of a tokshift export beside it, so its "
                "model and class names are unknown; keep the export folder's files together (tokshift export)"
            )
        return path.parent, config, path
    return None


def export_weights_file(folder: str | Path) -> Path | None:
    """The weights file of export folder `folder` (None when it is no export): what a command hashes."""
    found = find_export(folder)
    return found[2] if found is not None else None


def meta_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """An export's config.json as the entries of the model.pt it came from (config, classes, recipe, provenance)."""
    missing = [k for k in ("config", "label_names", "training") if k not in config]
    if missing:
        raise DataDamaged(f"the export's {CONFIG_FILE} lacks {missing}; export the model.pt again")
    return {
        **dict(config["training"]),
        "config": dict(config["config"]),
        "classes": [str(c) for c in config["label_names"]],
        "provenance": config.get("provenance"),
        "checkpoint_sha256": config.get("checkpoint_sha256"),
        "export": {k: config.get(k) for k in ("format", "format_version", "weights")},
    }


def read_export(path: str | Path) -> tuple[Path, dict[str, Any], dict[str, Any]] | None:
    """(folder, weights, meta) of the export at `path`, or None when `path` is none.

    The weights file's sha256 must be the one config.json records: a config.json beside the
    weights of another model would otherwise name the wrong classes for well-fitting weights.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from tokshift.fileio import sha256_file

    found = find_export(path)
    if found is None:
        return None
    folder, config, weights_file = found
    if not weights_file.is_file():
        raise InputMissing(f"export {folder} has no {weights_file.name}; copy the whole folder, or export again")
    recorded = (config.get("weights") or {}).get("sha256")
    actual = sha256_file(weights_file)
    if recorded != actual:
        raise DataDamaged(
            f"{weights_file} has sha256 {actual[:12]}... but {folder / CONFIG_FILE} records {str(recorded)[:12]}...: "
            "the weights are not this export's; re-copy the folder or export the model.pt again"
        )
    try:
        weights = load_file(weights_file, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataDamaged(f"{weights_file} cannot be read as safetensors ({exc}); re-copy it") from exc
    return folder, weights, meta_from_config(config)


# --------------------------------------------------------------------------- writing one


@dataclass(frozen=True)
class Exported:
    out_dir: Path
    files: list[str]
    model: str
    weights_sha256: str
    checkpoint_sha256: str
    table: Path | None  # the results table the card read (hub format)
    no_results: str | None  # why the card has no numbers (hub format), None when it has them


def _json_value(value: Any) -> Any:
    """`value` with tensors and tuples as JSON lists and non-finite floats as None."""
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "tolist"):  # a tensor or numpy scalar
        return _json_value(value.tolist())
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def export_config(meta: Mapping[str, Any], weights_sha256: str, checkpoint_sha256: str) -> dict[str, Any]:
    """config.json of a model.pt's entries (`meta`, without its weights)."""
    from tokshift.zoo import ZooConfig

    cfg = ZooConfig.from_dict(dict(meta["config"]))
    classes = [str(c) for c in meta["classes"]]
    return {
        "format": EXPORT_FORMAT,
        "format_version": FORMAT_VERSION,
        "model": cfg.name,
        "dataset": cfg.dataset,
        # timm's keys: `timm.create_model("local-dir:FOLDER")` reads them (after `import tokshift.timm`).
        "architecture": cfg.name,
        "num_classes": cfg.num_classes,
        "num_features": cfg.embed_dim,
        "label_names": classes,
        "pretrained_cfg": {
            "num_classes": cfg.num_classes,
            "input_size": [3, cfg.img_size, cfg.img_size],
            "fixed_input_size": True,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": list(MEAN),
            "std": list(STD),
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        },
        "config": cfg.to_dict(),
        "num_frames": cfg.num_frames,
        "frame_stride": cfg.frame_stride,
        "img_size": cfg.img_size,
        "input": {
            "layout": INPUT_LAYOUT,
            "shape": [None, cfg.num_frames, 3, cfg.img_size, cfg.img_size],
            "dtype": "float32",
            "channels": "RGB",
            "normalisation": "(x / 255 - mean) / std per channel",
            "mean": list(MEAN),
            "std": list(STD),
            "frames": f"{cfg.num_frames} frames {cfg.frame_stride} apart, short side resized to {cfg.img_size}, "
            "centre crop",
        },
        "output": "B,num_classes logits: the mean of the frames' logits; fuse views by averaging their logits",
        "training": _json_value({k: v for k, v in meta.items() if k not in _OWN_KEYS}),
        "checkpoint_sha256": checkpoint_sha256,
        "weights": {"file": WEIGHTS_FILE, "sha256": weights_sha256},
        "provenance": _json_value(meta.get("provenance")),
    }


def safetensors_bytes(tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> bytes:
    """The safetensors file of `tensors`, its metadata keys sorted so one model always gives the same bytes.

    The writer orders the metadata as a hash map does, differently in each process; the header is
    rewritten with the same entries sorted (same length, so the tensor data does not move).
    """
    from safetensors.torch import save

    data = save(dict(tensors), metadata=dict(metadata))
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    ordered = {"__metadata__": dict(sorted(header.pop("__metadata__", {}).items())), **header}
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > n:  # cannot happen for the same entries; keep the writer's bytes then
        return data
    return data[:8] + text.ljust(n, b" ") + data[8 + n :]


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
    import torch

    from tokshift.checkpoints import EXPORT, TOKSHIFT, open_checkpoint
    from tokshift.engine.loading import trained_from_checkpoint
    from tokshift.fileio import atomic_folder, atomic_write_bytes, atomic_write_text, sha256_file

    if fmt not in FORMATS:
        raise BadInput(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    src, out = Path(checkpoint), Path(out_dir)
    if not src.exists():
        raise InputMissing(f"checkpoint {src} not found; train the model first (tokshift train)")
    _check_out_dir(src, out)
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
