"""The TokShift model zoo (see `configs.py`) and lookups over it."""

from __future__ import annotations

from typing import Any

from tokshift.zoo.configs import BACKBONES, MODEL_KEYS, ZOO, Backbone, ZooConfig, validate

__all__ = [
    "BACKBONES",
    "MODEL_KEYS",
    "ZOO",
    "Backbone",
    "ZooConfig",
    "validate",
    "get_config",
    "zoo_names",
    "zoo_row",
    "ZOO_COLUMNS",
]


def zoo_names(dataset: str | None = None) -> list[str]:
    """Names of all zoo entries, or of those trained on `dataset` ("k400", "demo")."""
    return [n for n, c in ZOO.items() if dataset is None or c.dataset == dataset]


def get_config(name: str) -> ZooConfig:
    """The zoo entry called `name`; an unknown name fails listing the known ones."""
    try:
        return ZOO[name]
    except KeyError:
        raise ValueError(f"unknown zoo model {name!r}; known models: {', '.join(ZOO)}") from None


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
    "paper_top1",
    "paper_gflops",
)


def _round_gflops(g: float) -> float:
    """One decimal as the paper prints, more for the tiny demo models."""
    return round(g, 1) if g >= 10 else round(g, 4)


def zoo_row(name: str) -> dict[str, Any]:
    """One zoo entry as a table row, with parameters and GFLOPs computed from the built model."""
    from tokshift.flops import model_cost

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
        "paper_top1": cfg.paper_top1,
        "paper_gflops": cfg.paper_gflops,
    }
