"""Attention maps of a timm ViT, recomputed beside the forward pass for inspection.

Each block's attention module gets a forward pre-hook that keeps its input (the normed
tokens) and recomputes softmax(q kᵀ · scale) from the module's own `qkv` weights. The
forward pass itself is untouched: the fused kernel still computes the output, so the
model's numbers are those of training and evaluation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["METHODS", "attention_probs", "capture_attention", "cls_attention"]

# How the [CLS]-to-patch map is made from the per-block attentions.
METHODS = {
    "rollout": "attention rollout through all blocks (heads averaged, residual added)",
    "last": "last block's attention, heads averaged",
}


def attention_probs(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, N) attention weights of a timm `Attention` module for its input x (B, N, C)."""
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, _v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return ((q.float() * attn.scale) @ k.float().transpose(-2, -1)).softmax(dim=-1)


@contextlib.contextmanager
def capture_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside the block, every forward of `model` appends each block's (B, heads, N, N) attention.

    The list holds one tensor per block, in block order, for the last forward pass only.
    """
    blocks = list(getattr(model, "blocks", []))
    if not blocks or not all(hasattr(b, "attn") and hasattr(b.attn, "qkv") for b in blocks):
        raise ValueError(f"{type(model).__name__} has no timm ViT blocks with a qkv attention to read")
    maps: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if module is blocks[0].attn:
            maps.clear()
        with torch.no_grad():
            maps.append(attention_probs(module, args[0]).cpu())

    handles = [b.attn.register_forward_pre_hook(hook) for b in blocks]
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()


def cls_attention(maps: list[torch.Tensor], method: str = "rollout") -> torch.Tensor:
    """(B, N-1) attention of the [CLS] token to the patches, rows summing to 1.

    `rollout`: the product over blocks of (A + I) / 2 with A the head-averaged attention
    (rows renormalised), so paths through the residual count; `last`: the last block's
    head-averaged attention.
    """
    if method not in METHODS:
        raise ValueError(f"attention method {method!r}: choose one of {', '.join(METHODS)}")
    if not maps:
        raise ValueError("no attention was captured; run the model inside capture_attention")
    if method == "last":
        joint = maps[-1].mean(dim=1)
    else:
        eye = torch.eye(maps[0].shape[-1])
        joint = eye.expand_as(maps[0][:, 0]).clone()
        for a in maps:
            step = 0.5 * a.mean(dim=1) + 0.5 * eye
            step = step / step.sum(dim=-1, keepdim=True)
            joint = step @ joint
    cls = joint[:, 0, 1:]
    return cls / cls.sum(dim=-1, keepdim=True)
