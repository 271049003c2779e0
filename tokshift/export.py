"""The export format: a trained model as files anyone can read without unpickling or tokshift's internals.

A model.pt is a pickled dict. An export folder holds the weights as safetensors (reading them
runs no code), a `config.json` with everything needed to rebuild and use the model (zoo config,
class names in head order, input layout and normalisation, the training recipe, the checksum of
the model.pt it came from and that model.pt's provenance) and, in the `hub` format, a model card
`README.md`. `config.json` also carries timm's keys (`architecture`, `num_classes`,
`label_names`, `pretrained_cfg`), so timm reads the folder too.

This module is the format: its names, telling an export by content, config.json to and from a
model.pt's entries, reading the weights. `tokshift.checkpoints.open_checkpoint` reads exports
through it; `tokshift.engine.export` writes them (`tokshift export`, docs/export.md). Only the
standard library is imported at the top: the CLI's --help imports this module.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
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
    "INPUT_LAYOUT",
    "MEAN",
    "STD",
    "WEIGHTS_FILE",
    "export_config",
    "export_weights_file",
    "find_export",
    "is_safetensors",
    "meta_from_config",
    "read_export",
    "safetensors_bytes",
]

EXPORT_FORMAT = "tokshift-export"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
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


# --------------------------------------------------------------------------- a model.pt as an export


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
