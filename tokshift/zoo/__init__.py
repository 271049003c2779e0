"""The TokShift model zoo (see `configs.py`) and lookups over it.

Plain data only: reading the zoo imports neither torch nor timm, so the Snakefile,
the CLI's help and the config checks stay fast. Parameters and GFLOPs computed from
the built models are in `tokshift.flops`.
"""

from __future__ import annotations

from tokshift.errors import BadInput
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
]


def zoo_names(dataset: str | None = None) -> list[str]:
    """Names of all zoo entries, or of those trained on `dataset` ("k400", "demo")."""
    return [n for n, c in ZOO.items() if dataset is None or c.dataset == dataset]


def get_config(name: str) -> ZooConfig:
    """The zoo entry called `name`; an unknown name fails listing the known ones."""
    try:
        return ZOO[name]
    except KeyError:
        raise BadInput(f"unknown zoo model {name!r}; known models: {', '.join(ZOO)}") from None
