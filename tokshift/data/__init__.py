"""Data: dataset sources, ffmpeg frame extraction, sharded LMDB frame store, clip sampling and loading.

Heavy modules (torch, OpenCV) load on first use of their names, so ``tokshift index`` and
friends start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_index": "tokshift.data.sources",
    "IndexResult": "tokshift.data.sources",
    "IndexRow": "tokshift.data.sources",
    "ShardReader": "tokshift.data.store",
    "ShardWriter": "tokshift.data.store",
    "TrainClipDataset": "tokshift.data.datasets",
    "EvalViewDataset": "tokshift.data.datasets",
    "eval_views_from_frames": "tokshift.data.datasets",
    "normalize": "tokshift.data.transforms",
    "decode_video": "tokshift.data.decode",
    "VideoDecodeError": "tokshift.data.decode",
    "ffmpeg_executable": "tokshift.data.ffmpeg",
    "pack_shard": "tokshift.data.pack",
    "generate_demo": "tokshift.data.demo",
    "summarize_split": "tokshift.data.summary",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tokshift.data' has no attribute {name!r}")
