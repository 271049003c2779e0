"""TokShift and plain ViT video classifiers on timm's VisionTransformer.

A video of T frames goes through the ViT as a batch of B*T images; the video logit
is the mean over T of the per-frame head output on the final-normed [CLS] token.
TokShift differs from the plain ViT only in `TokShiftBlock`: before the attention
and before the MLP of every block, a quarter of the [CLS] channels is exchanged
with the neighbouring frames (docs/reference.md, "TokShift").
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.layers import LayerNorm
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn
from torch.nn import functional as F

from tokshift.zoo import MODEL_KEYS, ZooConfig, get_config

__all__ = [
    "token_shift_",
    "TokShiftBlock",
    "VideoVisionTransformer",
    "build_model",
    "resolve_model_config",
    "load_google_npz",
    "google_npz_state_dict",
    "resize_pos_embed",
    "CheckpointMismatchError",
    "load_state_dict_checked",
]


def token_shift_(x: torch.Tensor, num_frames: int, shift_div: int) -> torch.Tensor:
    """Shift the [CLS] token of x (B*T, N, D) across frames, in place, and return x.

    Channels [0, fold) of frame t take frame t+1's values (zero for the last frame),
    channels [fold, 2*fold) take frame t-1's values (zero for the first frame);
    patch tokens and the other channels are untouched. Only the (B, T, D) [CLS]
    slice is read and written, so the shift costs nothing next to the block itself.
    """
    bt, _, dim = x.shape
    if bt % num_frames:
        raise ValueError(f"batch of {bt} frames is not a multiple of num_frames={num_frames}")
    fold = dim // shift_div
    if fold == 0:
        return x
    cls = x[:, 0, :].view(bt // num_frames, num_frames, dim)  # view into x
    shifted = torch.zeros_like(cls[..., : 2 * fold])
    if num_frames > 1:
        shifted[:, :-1, :fold] = cls[:, 1:, :fold]  # from the next frame
        shifted[:, 1:, fold:] = cls[:, :-1, fold : 2 * fold]  # from the previous frame
    cls[..., : 2 * fold] = shifted
    return x


class TokShiftBlock(Block):
    """timm's pre-norm ViT block with the [CLS] token shifted before each sub-block.

    The shifted tensor is also the residual, as in the original TokShift.
    """

    def __init__(self, *args: Any, num_frames: int, shift_div: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.num_frames = num_frames
        self.shift_div = shift_div

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = token_shift_(x, self.num_frames, self.shift_div)
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        x = token_shift_(x, self.num_frames, self.shift_div)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


class VideoVisionTransformer(VisionTransformer):
    """A ViT applied per frame; logits are averaged over the frames of each video.

    Parameter names are timm's, so state dicts stay compatible with timm's ViT.
    """

    def __init__(self, *, arch: str, num_frames: int, shift_div: int, **vit_kwargs: Any) -> None:
        if arch == "tokshift":
            vit_kwargs["block_fn"] = functools.partial(TokShiftBlock, num_frames=num_frames, shift_div=shift_div)
        elif arch != "vit":
            raise ValueError(f"unknown arch {arch!r}; expected 'tokshift' or 'vit'")
        super().__init__(**vit_kwargs)
        self.arch = arch
        self.num_frames = num_frames
        self.shift_div = shift_div

    @property
    def img_size(self) -> int:
        return int(self.patch_embed.img_size[0])

    def forward(self, video: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """(B, T, 3, H, W) normalised frames -> (B, num_classes) video logits."""
        if video.ndim != 5:
            raise ValueError(f"expected a (B, T, 3, H, W) video tensor, got shape {tuple(video.shape)}")
        b, t = video.shape[:2]
        if t != self.num_frames:
            raise ValueError(f"model was built for {self.num_frames} frames, got {t}")
        frames = video.flatten(0, 1)
        logits = self.forward_head(self.forward_features(frames))
        return logits.view(b, t, -1).mean(dim=1)


def resolve_model_config(cfg_or_name: str | ZooConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The architecture dict for a zoo name, a ZooConfig or a plain dict (checked for missing keys)."""
    if isinstance(cfg_or_name, str):
        cfg_or_name = get_config(cfg_or_name)
    if isinstance(cfg_or_name, ZooConfig):
        return cfg_or_name.model_dict()
    d = dict(cfg_or_name)
    missing = [k for k in MODEL_KEYS if k not in d]
    if missing:
        raise ValueError(f"model config is missing key(s) {missing}; required keys: {list(MODEL_KEYS)}")
    return {k: d[k] for k in MODEL_KEYS}


def build_model(
    cfg_or_name: str | ZooConfig | Mapping[str, Any],
    num_classes: int | None = None,
    pretrained: str | Path | None = None,
) -> VideoVisionTransformer:
    """Build a TokShift or ViT video classifier.

    Args:
        cfg_or_name: a zoo name, a ZooConfig, or a dict with the keys in `tokshift.zoo.MODEL_KEYS`.
        num_classes: overrides the config's class count (the head size).
        pretrained: path to a Google ImageNet-21k ViT `.npz`; the head is then zero-initialised.
    """
    m = resolve_model_config(cfg_or_name)
    if num_classes is not None:
        m["num_classes"] = int(num_classes)
    model = VideoVisionTransformer(
        arch=m["arch"],
        num_frames=int(m["num_frames"]),
        shift_div=int(m["shift_div"]),
        img_size=int(m["img_size"]),
        patch_size=int(m["patch_size"]),
        num_classes=int(m["num_classes"]),
        embed_dim=int(m["embed_dim"]),
        depth=int(m["depth"]),
        num_heads=int(m["num_heads"]),
        mlp_ratio=float(m["mlp_ratio"]),
        qkv_bias=True,
        class_token=True,
        global_pool="token",
        norm_layer=functools.partial(LayerNorm, eps=1e-6),
        act_layer=nn.GELU,
    )
    if pretrained is not None:
        load_google_npz(model, pretrained)
    return model


# --------------------------------------------------------------------------- Google .npz weights


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model."""


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
            value.copy_(state[key].to(dtype=value.dtype))


def load_google_npz(model: VideoVisionTransformer, path: str | Path) -> None:
    """Load ImageNet-21k weights from a Google ViT `.npz` (ViT-B_16.npz, ViT-L_16.npz)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights {path} not found; run `snakemake download_weights` or `tokshift download`"
        )
    with np.load(path) as npz:
        state = google_npz_state_dict(npz, model)
    load_state_dict_checked(model, state, f"checkpoint {path}")
