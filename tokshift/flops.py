"""Parameters and multiply-accumulates per view, counted from the built model.

The paper's GFLOPs/view count the multiply-accumulates of the patch-embedding
convolution and of every Linear layer (attention score and weighting products are
not counted). Forward hooks record what each such layer actually computes during
one forward pass on the `meta` device, so no memory is allocated and a ViT-L at
384 px costs milliseconds. `zoo_row` puts these numbers beside a zoo entry's
configuration and the paper's, for `tokshift zoo` and the results table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tokshift.models import VideoVisionTransformer, resolve_model_config
from tokshift.zoo import ZooConfig, get_config


@dataclass(frozen=True)
class ModelCost:
    params: int
    macs: int  # multiply-accumulates for one view (one clip of num_frames frames)


def count_macs(model: nn.Module, video_shape: tuple[int, ...]) -> int:
    """MACs of all Conv2d and Linear layers for one forward of a tensor of `video_shape`."""
    total = 0

    def linear_hook(mod: nn.Linear, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * mod.in_features

    def conv_hook(mod: nn.Conv2d, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = mod.kernel_size
        total += out.numel() * (mod.in_channels // mod.groups) * kh * kw

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.empty(video_shape, device=device))
    finally:
        for h in handles:
            h.remove()
    return total


def model_cost(cfg: ZooConfig | str | Mapping[str, Any]) -> ModelCost:
    """Parameters and MACs per view of a zoo entry (or model dict), built on the meta device."""
    m = resolve_model_config(cfg)
    with torch.device("meta"):
        model = VideoVisionTransformer.from_config(m)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    macs = count_macs(model, (1, m["num_frames"], 3, m["img_size"], m["img_size"]))
    return ModelCost(params=params, macs=macs)


# --------------------------------------------------------------------------- the zoo table

ZOO_COLUMNS = (
    "name",
    "arch",
    "backbone",
    "img_size",
    "num_frames",
    "frame_stride",
    "shift_div",
    "params_m",
    "gflops_per_view",
    "gpus",
    "batch_per_gpu",
    "accum_steps",
    "global_batch",
    "paper_top1",
    "paper_gflops",
)


def _round_gflops(g: float) -> float:
    """One decimal as the paper prints, more for the tiny demo models."""
    return round(g, 1) if g >= 10 else round(g, 4)


def zoo_row(name: str) -> dict[str, Any]:
    """One zoo entry as a table row, with parameters and GFLOPs computed from the built model.

    `gpus` x `batch_per_gpu` x `accum_steps` = `global_batch` is the layout the recipe's learning
    rate is set for; `gpus: auto` asks SLURM for `gpus` for a Kinetics-400 entry.
    """
    cfg = get_config(name)
    cost = model_cost(cfg)
    return {
        "name": cfg.name,
        "arch": cfg.arch,
        "backbone": cfg.backbone,
        "img_size": cfg.img_size,
        "num_frames": cfg.num_frames,
        "frame_stride": cfg.frame_stride,
        "shift_div": cfg.shift_div,
        "params_m": round(cost.params / 1e6, 2),
        "gflops_per_view": _round_gflops(cost.macs / 1e9),
        "gpus": cfg.gpus,
        "batch_per_gpu": cfg.batch_size,
        "accum_steps": cfg.accum_steps,
        "global_batch": cfg.reference_global_batch,
        "paper_top1": cfg.paper_top1,
        "paper_gflops": cfg.paper_gflops,
    }
