"""What a model looks at in one clip: per-frame logits, [CLS] attention maps, and TokShift without its shift.

One view is explained, the centre clip's centre crop (the frames the model sees). The video
logit is the mean over frames of the per-frame head outputs (`tokshift.models`), so the
per-frame logits show which frames carry the decision. A TokShift model is also run with its
shift switched off (`tokshift.models.shift_disabled`): then it is a per-frame ViT, and a
prediction that needs the order of the frames falls apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokshift.engine.loading import TrainedModel
from tokshift.errors import BadInput
from tokshift.models import shift_disabled
from tokshift.settings import default
from tokshift.viz.attention import METHODS, capture_attention, cls_attention

__all__ = ["Explanation", "Pass", "explain", "explain_shard_videos", "explain_view"]


@dataclass
class Pass:
    """One forward pass over the clip: with the token shift on, or (TokShift only) off."""

    shift: bool
    frame_logits: np.ndarray  # (T, C) head output of each frame's [CLS] token
    logits: np.ndarray  # (C,) the video logit: frame_logits.mean(0)
    probs: np.ndarray  # (C,) softmax of `logits`
    attention: np.ndarray  # (T, grid_h, grid_w) [CLS]-to-patch attention per frame, each summing to 1

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.logits))

    def top(self, classes: Sequence[str], k: int = 5) -> list[tuple[str, float]]:
        """The k most probable (class, probability) pairs."""
        order = np.argsort(-self.probs, kind="stable")[:k]
        return [(classes[i], float(self.probs[i])) for i in order]


@dataclass
class Explanation:
    """Everything the explain figure shows, as arrays (for notebooks and tests)."""

    video: str
    model: str
    arch: str
    classes: list[str]
    frames: np.ndarray  # (T, H, W, 3) uint8: the crop the model sees
    attention_method: str
    passes: list[Pass] = field(default_factory=list)  # shift on first; TokShift adds shift off
    label: str | None = None  # the true class, when known

    @property
    def shift_on(self) -> Pass:
        return self.passes[0]

    @property
    def shift_off(self) -> Pass | None:
        return self.passes[1] if len(self.passes) > 1 else None

    @property
    def attention_description(self) -> str:
        return METHODS[self.attention_method]


def _forward(model: torch.nn.Module, video: torch.Tensor, method: str, shift: bool) -> Pass:
    """Per-frame logits and attention of a normalised (1, T, 3, H, W) clip."""
    off = contextlib.nullcontext() if shift else shift_disabled(model)
    with torch.no_grad(), off, capture_attention(model) as maps:
        frame_logits = model.forward_head(model.forward_features(video.flatten(0, 1))).float().cpu()
    grid = tuple(int(g) for g in model.patch_embed.grid_size)
    attention = cls_attention(maps, method).reshape(-1, *grid)
    logits = frame_logits.mean(dim=0)
    return Pass(
        shift=shift,
        frame_logits=frame_logits.numpy(),
        logits=logits.numpy(),
        probs=logits.softmax(-1).numpy(),
        attention=attention.numpy(),
    )


def explain_view(
    trained: TrainedModel, view: torch.Tensor, video: str, label: str | None = None, method: str = "rollout"
) -> Explanation:
    """Explain one (T, 3, H, W) uint8 clip of `trained`'s input size."""
    from tokshift.data.transforms import normalize

    if method not in METHODS:
        raise BadInput(f"attention method {method!r}: choose one of {', '.join(METHODS)}")
    cfg = trained.config
    expected = (cfg.num_frames, 3, cfg.img_size, cfg.img_size)
    if tuple(view.shape) != expected or view.dtype != torch.uint8:
        raise ValueError(f"clip of {video}: expected a {expected} uint8 tensor, got {tuple(view.shape)} {view.dtype}")
    model = trained.model
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = normalize(view[None].to(device))
    passes = [_forward(model, x, method, shift=True)]
    if cfg.arch == "tokshift":
        passes.append(_forward(model, x, method, shift=False))
    model.train(was_training)
    return Explanation(
        video=video,
        model=cfg.name,
        arch=cfg.arch,
        classes=list(trained.classes),
        frames=view.permute(0, 2, 3, 1).numpy().copy(),
        attention_method=method,
        passes=passes,
        label=label,
    )


def _centre_view(frames: np.ndarray, cfg: Any, resize: str) -> torch.Tensor:
    from tokshift.data.datasets import eval_views_from_frames

    return eval_views_from_frames(frames, cfg.num_frames, cfg.frame_stride, cfg.img_size, 1, 1, resize)[0]


def explain(
    model: TrainedModel | str | Path,
    video: str | Path | np.ndarray,
    method: str = "rollout",
    resize: str = default("evaluate", "resize"),
    label: str | None = None,
) -> Explanation:
    """Explain a video file (decoded with ffmpeg) or a (N, H, W, 3) uint8 RGB array.

    `model` is what `tokshift.load` returns or a checkpoint path; `method` is `rollout` or
    `last` (see `tokshift.viz.attention.METHODS`); `resize` as `tokshift predict --resize`.
    """
    from tokshift.data.transforms import check_resize
    from tokshift.notebook import _frames, load

    check_resize(resize)  # before decoding, which would otherwise take a bad name for bicubic
    trained = model if isinstance(model, TrainedModel) else load(model)
    frames = _frames(video, trained.config.img_size, resize)
    name = str(video) if isinstance(video, (str, Path)) else "array"
    return explain_view(trained, _centre_view(frames, trained.config, resize), name, label, method)


def explain_shard_videos(
    trained: TrainedModel, shards: Sequence[str | Path], video_ids: Sequence[str], method: str = "rollout"
) -> list[Explanation]:
    """Explain videos of packed shards by id (the ids of predictions.csv), with their true labels."""
    from tokshift.data.datasets import EvalViewDataset

    cfg = trained.config
    ds = EvalViewDataset(list(shards), cfg.num_frames, cfg.frame_stride, cfg.img_size, num_clips=1, num_crops=1)
    if ds.classes != list(trained.classes):
        raise BadInput(
            f"the shards' {len(ds.classes)} classes differ from the {len(trained.classes)} the model {cfg.name} "
            "was trained on; explain videos of the dataset it was trained on"
        )
    position = {vid: i for i, vid in enumerate(ds.video_ids)}
    missing = [v for v in video_ids if v not in position]
    if missing:
        raise BadInput(f"video id(s) {missing[:5]} are in none of the shards {[str(s) for s in shards]}")
    out = []
    for vid in video_ids:
        item = ds[position[vid]]
        label = ds.classes[int(item["label"])] if int(item["label"]) >= 0 else None
        out.append(explain_view(trained, item["views"][0], vid, label, method))
    return out
