"""TokShift and plain ViT video classifiers on timm's VisionTransformer.

A video of T frames goes through the ViT as a batch of B*T images; the video logit
is the mean over T of the per-frame head output on the final-normed [CLS] token.
TokShift differs from the plain ViT only in `TokShiftBlock`: before the attention
and before the MLP of every block, a quarter of the [CLS] channels is exchanged
with the neighbouring frames (docs/reference.md, "TokShift").
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from timm.layers import LayerNorm
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from tokshift.zoo import MODEL_KEYS, ZooConfig, get_config

__all__ = [
    "token_shift",
    "token_shift_",
    "TokShiftBlock",
    "VideoVisionTransformer",
    "resolve_model_config",
    "shift_disabled",
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


def token_shift(x: torch.Tensor, num_frames: int, shift_div: int) -> torch.Tensor:
    """`token_shift_` into a new tensor; x is left unchanged.

    Activation checkpointing re-runs a block from its saved input, so the shift must not
    modify the block input. One copy of x is the least an out-of-place result can cost, and
    copying then shifting in place is cheaper than concatenating a new [CLS] token with the
    patch tokens (bench/RESULTS_model.md).
    """
    return token_shift_(x.clone(), num_frames, shift_div)


class TokShiftBlock(Block):
    """timm's pre-norm ViT block with the [CLS] token shifted before each sub-block.

    The shifted tensor is also the residual, as in the original TokShift. `shift_enabled`
    False (see `shift_disabled`) makes the block a plain ViT block, frame by frame. The block
    input is never modified (activation checkpointing re-runs the block from it); the second
    shift works in place on the block's own residual sum, which nothing else has kept.
    """

    def __init__(self, *args: Any, num_frames: int, shift_div: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.num_frames = num_frames
        self.shift_div = shift_div
        self.shift_enabled = True

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if self.shift_enabled:
            x = token_shift(x, self.num_frames, self.shift_div)
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        if self.shift_enabled:
            x = token_shift_(x, self.num_frames, self.shift_div)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


@contextlib.contextmanager
def shift_disabled(model: nn.Module) -> Iterator[int]:
    """Run `model` without its token shift (each frame alone, as a per-frame ViT), then restore it.

    Yields how many TokShiftBlocks were switched off (0 for a plain ViT). For inspection only:
    training never enters it.
    """
    blocks = [m for m in model.modules() if isinstance(m, TokShiftBlock)]
    before = [b.shift_enabled for b in blocks]
    for b in blocks:
        b.shift_enabled = False
    try:
        yield len(blocks)
    finally:
        for b, state in zip(blocks, before):
            b.shift_enabled = state


class VideoVisionTransformer(VisionTransformer):
    """A ViT applied per frame; logits are averaged over the frames of each video.

    Parameter names are timm's, so state dicts stay compatible with timm's ViT. Weights
    start random here; `tokshift.engine.loading.build_model` starts them from a file.
    Under autocast the residual stream and the final norm stay float32 and the head runs in
    float32 too (`forward_head`), so the logits averaged over frames and fused over views
    are float32. `set_grad_checkpointing(True)` (timm's) recomputes each block in the
    backward pass instead of keeping its activations.
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

    @classmethod
    def from_config(
        cls, cfg_or_name: str | ZooConfig | Mapping[str, Any], num_classes: int | None = None
    ) -> VideoVisionTransformer:
        """The model of a zoo name, a ZooConfig or a dict with the keys in `tokshift.zoo.MODEL_KEYS`.

        `num_classes` overrides the config's class count (the head size).
        """
        m = resolve_model_config(cfg_or_name)
        return cls(
            arch=m["arch"],
            num_frames=int(m["num_frames"]),
            shift_div=int(m["shift_div"]),
            img_size=int(m["img_size"]),
            patch_size=int(m["patch_size"]),
            num_classes=int(m["num_classes"] if num_classes is None else num_classes),
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

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """timm's head (pool, head Linear) in float32 or wider, even under autocast.

        In bf16 the per-frame logits would keep ~3 significant digits, too few for the mean
        over frames and the fusion over views.
        """
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        if not torch.amp.is_autocast_available(x.device.type):  # e.g. "meta", where FLOPs are counted
            return super().forward_head(x, pre_logits=pre_logits)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return super().forward_head(x, pre_logits=pre_logits)


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
