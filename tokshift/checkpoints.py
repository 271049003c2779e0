"""Any checkpoint a user has: Google's ViT `.npz`, the original TokShift `.pth`, tokshift's `model.pt`,
a `tokshift export` folder (safetensors weights + config.json).

The format is read from the file's content, never from its name, so a renamed file
still loads as what it is. Torch files are unpickled with ``weights_only=True``: a
file that needs arbitrary Python objects is refused, because unpickling those can run
code. Every layout is translated to a state dict in timm's parameter names (those of
`tokshift.models.VideoVisionTransformer`); `tokshift.engine.loading` builds the model and
loads it (docs/reference.md, "Pretrained weights" and "Released checkpoints of the original").
"""

from __future__ import annotations

import math
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from tokshift import export
from tokshift.errors import BadInput, InputMissing

__all__ = [
    "EXPORT",
    "NPZ",
    "ORIGINAL",
    "TOKSHIFT",
    "Checkpoint",
    "CheckpointFormatError",
    "CheckpointMismatchError",
    "google_npz_state_dict",
    "open_checkpoint",
    "original_state_dict",
    "read_torch_file",
    "resize_pos_embed",
    "sniff_format",
]

NPZ = "npz"  # Google's ImageNet-21k ViT weights (no trained classifier)
ORIGINAL = "original"  # a `.pth` of the original TokShift code (DDP-wrapped ViT-pytorch names)
TOKSHIFT = "tokshift"  # a `model.pt` written by `tokshift train` (or imported from an original `.pth`)
EXPORT = "export"  # a folder written by `tokshift export`: model.safetensors + config.json

DESCRIPTIONS = {
    NPZ: "Google ViT .npz",
    ORIGINAL: "original TokShift .pth",
    TOKSHIFT: "tokshift model.pt",
    EXPORT: export.DESCRIPTION,
}


class CheckpointMismatchError(BadInput):
    """A checkpoint whose keys or shapes do not fit the model."""


class CheckpointFormatError(BadInput):
    """A file that is no checkpoint this package reads, or one it refuses to unpickle."""


# --------------------------------------------------------------------------- reading files


def sniff_format(path: str | Path) -> str:
    """'npz' or 'torch', from the file's bytes.

    A torch file is either a zip holding a ``data.pkl`` member or (the legacy format) a
    bare pickle stream; an `.npz` is a zip of ``.npy`` members. Both are zip files, so
    the members decide.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile as exc:
            raise CheckpointFormatError(f"{path} looks like a zip file but cannot be read ({exc}); re-copy it") from exc
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "torch"
        if names and all(n.endswith(".npy") for n in names):
            return NPZ
        raise CheckpointFormatError(
            f"{path} is a zip file but neither a torch checkpoint (no data.pkl member) nor an .npz "
            f"(members other than .npy: {[n for n in names if not n.endswith('.npy')][:5]})"
        )
    if head[:1] == b"\x80":  # pickle protocol >= 2: torch.save(..., _use_new_zipfile_serialization=False)
        return "torch"
    raise CheckpointFormatError(
        f"{path} is neither a torch checkpoint (.pth/.pt), a Google ViT .npz nor a tokshift export "
        f"(it starts with bytes {head!r})"
    )


_UNSUPPORTED_GLOBAL = re.compile(r"\bGLOBAL ([\w.]+)")


def read_torch_file(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with errors that say what to do."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _UNSUPPORTED_GLOBAL.search(str(exc))
        what = f" (it needs the Python object {found.group(1)})" if found else ""
        raise CheckpointFormatError(
            f"{path} holds pickled Python objects besides tensors and plain containers{what}; it is not loaded "
            "because unpickling arbitrary objects can run code. If you trust the file, keep only its weights: "
            f"torch.save({{'state_dict': torch.load('{path}', weights_only=False)['state_dict']}}, 'weights.pth') "
            "and load weights.pth instead"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointFormatError(f"{path} cannot be read as a torch checkpoint ({exc}); re-copy it") from exc


# --------------------------------------------------------------------------- the original's layout

_WRAPPER_PREFIXES = ("module.", "base_model.")  # DDP, then the original's video wrapper
_LAYER = r"^transformer\.encoder\.layer\.(\d+)\."
_RENAMES = [
    (re.compile(r"^transformer\.embeddings\.patch_embeddings\."), "patch_embed.proj."),
    (re.compile(r"^transformer\.embeddings\.position_embeddings$"), "pos_embed"),
    (re.compile(r"^transformer\.embeddings\.cls_token$"), "cls_token"),
    (re.compile(r"^transformer\.encoder\.encoder_norm\."), "norm."),
    (re.compile(_LAYER + r"attention_norm\."), r"blocks.\1.norm1."),
    (re.compile(_LAYER + r"ffn_norm\."), r"blocks.\1.norm2."),
    (re.compile(_LAYER + r"ffn\."), r"blocks.\1.mlp."),
    (re.compile(_LAYER + r"attn\.out\."), r"blocks.\1.attn.proj."),
]
_QKV = re.compile(_LAYER + r"attn\.(query|key|value)\.(weight|bias)$")


def strip_wrappers(key: str) -> str:
    """A key without the ``module.`` (DDP) and ``base_model.`` (video wrapper) prefixes."""
    for prefix in _WRAPPER_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def original_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original's ViT-pytorch names translated to timm's.

    Query, key and value (separate Linear layers) are concatenated in that order into
    ``attn.qkv``. A key that matches no rule keeps its (unprefixed) name, so the strict
    load reports it as unexpected instead of dropping it silently.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for raw_key, value in state.items():
        key = strip_wrappers(raw_key)
        m = _QKV.match(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        for pattern, repl in _RENAMES:
            new = pattern.sub(repl, key, count=1)
            if new != key:
                key = new
                break
        out[key] = value
    for (layer, param), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:
            out[f"blocks.{layer}.attn.qkv.{param}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
        else:  # incomplete: leave the pieces to be reported
            for name, value in parts.items():
                out[f"blocks.{layer}.attn.{name}.{param}"] = value
    return out


def _looks_original(state: Mapping[str, Any]) -> bool:
    return any(isinstance(k, str) and strip_wrappers(k).startswith("transformer.") for k in state)


# --------------------------------------------------------------------------- Google .npz layout


def resize_pos_embed(posemb: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Resize a (1, 1 + g*g, D) position table to a new patch grid, keeping the [CLS] entry.

    Bilinear through the grid corners (``align_corners=True``, no antialiasing): the numbers
    of the original TokShift's order-1 spline zoom, to float32 rounding (measured in
    tests/test_checkpoints.py). timm's default resample (bicubic, antialiased) samples
    differently, which costs about 3 points top-1 on Kinetics-400. `align_corners` is what
    makes timm >= 1.0.31 the floor in pyproject.toml.
    """
    n = posemb.shape[1] - 1
    old = math.isqrt(n)
    if old * old != n:
        raise CheckpointMismatchError(f"position table of {n} patches is not a square grid")
    return resample_abs_pos_embed(
        posemb,
        [int(grid_hw[0]), int(grid_hw[1])],
        [old, old],
        num_prefix_tokens=1,
        interpolation="bilinear",
        antialias=False,
        align_corners=True,
    )


def google_npz_state_dict(npz: Mapping[str, np.ndarray], model: nn.Module) -> dict[str, torch.Tensor]:
    """Translate Google's ViT `.npz` layout into the state dict of `model` (a timm ViT).

    The classifier head is zero-initialised for the model's classes and `pre_logits`
    is dropped (ImageNet-21k checkpoints carry both for 21k classes).
    """

    def get(key: str) -> np.ndarray:
        if key not in npz:
            raise CheckpointMismatchError(f"key {key!r} missing from the .npz checkpoint")
        return np.asarray(npz[key])

    dim = model.embed_dim
    sd: dict[str, np.ndarray] = {
        "patch_embed.proj.weight": get("embedding/kernel").transpose(3, 2, 0, 1),
        "patch_embed.proj.bias": get("embedding/bias"),
        "cls_token": get("cls"),
        "pos_embed": get("Transformer/posembed_input/pos_embedding"),
        "norm.weight": get("Transformer/encoder_norm/scale"),
        "norm.bias": get("Transformer/encoder_norm/bias"),
    }
    for i in range(len(model.blocks)):
        p, t = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        att = p + "MultiHeadDotProductAttention_1/"
        sd[t + "norm1.weight"] = get(p + "LayerNorm_0/scale")
        sd[t + "norm1.bias"] = get(p + "LayerNorm_0/bias")
        sd[t + "attn.qkv.weight"] = np.concatenate(
            [get(att + f"{n}/kernel").reshape(dim, dim).T for n in ("query", "key", "value")]
        )
        sd[t + "attn.qkv.bias"] = np.concatenate(
            [get(att + f"{n}/bias").reshape(dim) for n in ("query", "key", "value")]
        )
        sd[t + "attn.proj.weight"] = get(att + "out/kernel").reshape(dim, dim).T
        sd[t + "attn.proj.bias"] = get(att + "out/bias")
        sd[t + "norm2.weight"] = get(p + "LayerNorm_2/scale")
        sd[t + "norm2.bias"] = get(p + "LayerNorm_2/bias")
        for j in (0, 1):
            sd[t + f"mlp.fc{j + 1}.weight"] = get(p + f"MlpBlock_3/Dense_{j}/kernel").T
            sd[t + f"mlp.fc{j + 1}.bias"] = get(p + f"MlpBlock_3/Dense_{j}/bias")
    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    out["pos_embed"] = resize_pos_embed(out["pos_embed"], model.patch_embed.grid_size)
    out["head.weight"] = torch.zeros_like(model.head.weight)
    out["head.bias"] = torch.zeros_like(model.head.bias)
    return out


# --------------------------------------------------------------------------- any checkpoint


@dataclass
class Checkpoint:
    """One checkpoint file, read and classified.

    `weights` holds timm-named tensors for the torch formats (the original's already
    translated) and an export, and Google's raw arrays for an `.npz`; `meta` is everything
    else in the file (a model.pt's config and classes, the original's epoch and best_acc1; an
    export's config.json in the same shape as the model.pt it came from). `path` is an
    export's folder.
    """

    path: Path
    kind: str
    weights: Mapping[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.kind]

    @property
    def head_classes(self) -> int | None:
        """Outputs of the stored classifier head (None for an `.npz`, whose head is not used)."""
        head = self.weights.get("head.weight") if self.kind != NPZ else None
        return int(head.shape[0]) if head is not None else None

    def state_dict_for(self, model: nn.Module, resize_pos: bool = True) -> dict[str, torch.Tensor]:
        """The weights as `model`'s state dict (position table resized to its grid when `resize_pos`)."""
        if self.kind == NPZ:
            return google_npz_state_dict(self.weights, model)
        state = dict(self.weights)
        pos = state.get("pos_embed")
        if resize_pos and isinstance(pos, torch.Tensor) and pos.ndim == 3 and pos.shape[1] > 1:
            grid = tuple(model.patch_embed.grid_size)
            if pos.shape[1] != 1 + grid[0] * grid[1]:
                state["pos_embed"] = resize_pos_embed(pos.detach().cpu(), grid)
        return state


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Read any supported checkpoint; the format comes from the content, not the name.

    An export is read from its folder, its config.json or its weights file.
    """
    path = Path(path)
    found = export.read_export(path)
    if found is not None:
        folder, weights, meta = found
        return Checkpoint(folder, EXPORT, weights, meta)
    if path.is_dir():
        raise BadInput(
            f"checkpoint {path} is a folder but no tokshift export (no {export.CONFIG_FILE} written by "
            "tokshift export in it); give a checkpoint file or an export folder"
        )
    if not path.is_file():
        raise InputMissing(f"checkpoint {path} not found")
    if sniff_format(path) == NPZ:
        with np.load(path, allow_pickle=False) as npz:
            return Checkpoint(path, NPZ, {k: npz[k] for k in npz.files})
    obj = read_torch_file(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) and "config" in obj:
        return Checkpoint(path, TOKSHIFT, obj["model"], {k: v for k, v in obj.items() if k != "model"})
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        meta = {k: v for k, v in obj.items() if k in ("epoch", "best_acc1")}
        return Checkpoint(path, ORIGINAL, original_state_dict(obj["state_dict"]), meta)
    if isinstance(obj, Mapping) and _looks_original(obj):  # a bare state dict of the original
        return Checkpoint(path, ORIGINAL, original_state_dict(obj))
    keys = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointFormatError(
        f"{path} is a torch file but neither a tokshift model.pt (keys 'model', 'config', 'classes') nor an "
        f"original TokShift checkpoint (key 'state_dict' with 'transformer.…' weights); it holds {keys}"
    )
