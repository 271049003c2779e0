"""TokShift video transformer: model zoo, data pipeline, training and 30-view evaluation.

In a notebook: ``m = tokshift.load("model.pt")`` then ``tokshift.predict(m, "video.mp4")``.
These names load torch on first use, so ``import tokshift`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load": "tokshift.notebook",
    "predict": "tokshift.notebook",
    "TrainedModel": "tokshift.notebook",
    "build_model": "tokshift.engine.loading",
    "import_original": "tokshift.engine.loading",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tokshift' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
