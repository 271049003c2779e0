"""Any checkpoint a user has: Google's ViT `.npz`, the original TokShift `.pth`, tokshift's `model.pt`.

The format is read from the file's content, never from its name, so a renamed file
still loads as what it is. Torch files are unpickled with ``weights_only=True``: a
file that needs arbitrary Python objects is refused, because unpickling those can run
code. Every layout is translated to timm's parameter names (those of
`tokshift.models.VideoVisionTransformer`) and loaded through `load_state_dict_checked`,
so a checkpoint of another depth, width or patch size fails naming the key and both
shapes (docs/reference.md, "Pretrained weights" and "Released checkpoints of the original").
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from tokshift.models import VideoVisionTransformer

__all__ = [
    "NPZ",
    "ORIGINAL",
    "TOKSHIFT",
    "Checkpoint",
    "CheckpointFormatError",
    "CheckpointMismatchError",
    "google_npz_state_dict",
    "load_google_npz",
    "load_pretrained",
    "load_state_dict_checked",
    "open_checkpoint",
    "original_state_dict",
    "read_torch_file",
    "resize_pos_embed",
    "sniff_format",
]

log = logging.getLogger(__name__)

NPZ = "npz"  # Google's ImageNet-21k ViT weights (no trained classifier)
ORIGINAL = "original"  # a `.pth` of the original TokShift code (DDP-wrapped ViT-pytorch names)
TOKSHIFT = "tokshift"  # a `model.pt` written by `tokshift train` (or imported from an original `.pth`)

DESCRIPTIONS = {
    NPZ: "Google ViT .npz",
    ORIGINAL: "original TokShift .pth",
    TOKSHIFT: "tokshift model.pt",
}


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model."""


class CheckpointFormatError(ValueError):
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
        f"{path} is neither a torch checkpoint (.pth/.pt) nor a Google ViT .npz (it starts with bytes {head!r})"
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
    ``attn.qkv``. A key that matches no rule keeps its (unprefixed) name, so the checked
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


def resize_pos_embed(posemb: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """Resize a (1, 1 + g*g, D) position table to a new patch grid, keeping the [CLS] entry.

    Bilinear through the grid corners (``align_corners=True``, in float64): the same
    numbers as the order-1 spline zoom of the original TokShift. A resize that samples
    differently (half-pixel centres, antialiasing) costs about 3 points top-1 on
    Kinetics-400, which is why timm's resampler is not used.
    """
    cls_tok, grid = posemb[:, :1], posemb[0, 1:]
    old = int(round(np.sqrt(len(grid))))
    if old * old != len(grid):
        raise CheckpointMismatchError(f"position table of {len(grid)} patches is not a square grid")
    if (old, old) == tuple(grid_hw):
        return posemb
    hw = (int(grid_hw[0]), int(grid_hw[1]))
    chw = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float64)).reshape(old, old, -1).permute(2, 0, 1)
    chw = F.interpolate(chw[None], size=hw, mode="bilinear", align_corners=True)[0]
    resized = chw.permute(1, 2, 0).reshape(1, hw[0] * hw[1], -1).numpy().astype(posemb.dtype, copy=False)
    return np.concatenate([cls_tok, resized], axis=1)


def google_npz_state_dict(npz: Mapping[str, np.ndarray], model: VideoVisionTransformer) -> dict[str, torch.Tensor]:
    """Translate Google's ViT `.npz` layout into this model's state dict.

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
        "pos_embed": resize_pos_embed(get("Transformer/posembed_input/pos_embedding"), model.patch_embed.grid_size),
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
    out["head.weight"] = torch.zeros_like(model.head.weight)
    out["head.bias"] = torch.zeros_like(model.head.bias)
    return out


# --------------------------------------------------------------------------- any checkpoint


@dataclass
class Checkpoint:
    """One checkpoint file, read and classified.

    `weights` holds timm-named tensors for the torch formats (the original's already
    translated) and Google's raw arrays for an `.npz`; `meta` is everything else in the
    file (a model.pt's config and classes, the original's epoch and best_acc1).
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

    def state_dict_for(self, model: VideoVisionTransformer, resize_pos: bool = True) -> dict[str, torch.Tensor]:
        """The weights as `model`'s state dict (position table resized to its grid when `resize_pos`)."""
        if self.kind == NPZ:
            return google_npz_state_dict(self.weights, model)
        state = dict(self.weights)
        pos = state.get("pos_embed")
        if resize_pos and isinstance(pos, torch.Tensor) and pos.ndim == 3 and pos.shape[1] > 1:
            grid = tuple(model.patch_embed.grid_size)
            if pos.shape[1] != 1 + grid[0] * grid[1]:
                resized = resize_pos_embed(pos.detach().cpu().numpy(), grid)
                state["pos_embed"] = torch.from_numpy(np.ascontiguousarray(resized))
        return state


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Read any supported checkpoint; the format comes from the content, not the name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
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


def load_state_dict_checked(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model`, failing on any missing, unexpected or mis-shaped key.

    The error names every offending key with both shapes, so a wrong backbone or
    image size is obvious instead of surfacing as a cryptic size-mismatch trace.
    """
    own = model.state_dict()
    problems = []
    for key, value in own.items():
        if key not in state:
            problems.append(f"missing key {key!r} (model shape {tuple(value.shape)})")
        elif tuple(state[key].shape) != tuple(value.shape):
            problems.append(
                f"key {key!r}: checkpoint shape {tuple(state[key].shape)} != model shape {tuple(value.shape)}"
            )
    for key in state:
        if key not in own:
            problems.append(f"unexpected key {key!r} (checkpoint shape {tuple(state[key].shape)})")
    if problems:
        raise CheckpointMismatchError(f"{source} does not fit the model:\n  " + "\n  ".join(problems))
    with torch.no_grad():
        for key, value in own.items():
            value.copy_(torch.as_tensor(state[key]).to(dtype=value.dtype))


def _fit_head(state: dict[str, torch.Tensor], model: VideoVisionTransformer, ckpt: Checkpoint) -> None:
    """Keep a trained head whose class count matches the model; otherwise start it at zero."""
    have, want = ckpt.head_classes, int(model.head.weight.shape[0])
    if have is None or have == want:
        return
    log.info(
        "%s %s has a %d-class head, the model has %d classes: head re-initialised to zeros for the new classes",
        ckpt.description,
        ckpt.path,
        have,
        want,
    )
    state["head.weight"] = torch.zeros_like(model.head.weight)
    state["head.bias"] = torch.zeros_like(model.head.bias)


def load_pretrained(model: VideoVisionTransformer, path: str | Path) -> Checkpoint:
    """Initialise `model` from any supported checkpoint and return what was read.

    An `.npz` gives a zero head; a `.pth` or `model.pt` keeps its head when the class
    count matches and starts a zero head otherwise. Position tables of another grid are
    resized with `resize_pos_embed`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights {path} not found; run `snakemake download_weights` or `tokshift download`"
        )
    ckpt = open_checkpoint(path)
    state = ckpt.state_dict_for(model)
    if ckpt.kind != NPZ:
        _fit_head(state, model, ckpt)
    load_state_dict_checked(model, state, f"checkpoint {path} ({ckpt.description})")
    return ckpt


def load_google_npz(model: VideoVisionTransformer, path: str | Path) -> None:
    """Load ImageNet-21k weights from a Google ViT `.npz` (ViT-B_16.npz, ViT-L_16.npz)."""
    if Path(path).is_file() and sniff_format(path) != NPZ:
        raise CheckpointFormatError(f"{path} is a torch checkpoint, not a Google ViT .npz; use load_pretrained")
    load_pretrained(model, path)
