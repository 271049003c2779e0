"""A small API for notebooks: `load` any checkpoint, `predict` a video's top classes.

Prediction uses the evaluation's own code (the 30 views of `eval_views_from_frames`,
`view_logits`, logit fusion), so a notebook sees the numbers `tokshift predict` prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokshift.checkpoints import NPZ, open_checkpoint
from tokshift.engine.loading import TrainedModel, build_model, load_state, trained_from_checkpoint
from tokshift.errors import BadInput, InputMissing
from tokshift.settings import default
from tokshift.zoo import get_config

__all__ = ["TrainedModel", "load", "predict"]


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load(
    path: str | Path,
    model: str | None = None,
    classes: Sequence[str] | None = None,
    device: str | torch.device | None = None,
) -> TrainedModel:
    """The model in `path` in eval mode, with `.model`, `.classes` and `.config`.

    `path` is a tokshift model.pt, a `.pth` of the original TokShift (then `model` is the
    zoo name it was trained as) or a Google ViT `.npz` (then `model` names the zoo entry
    to build; its head is zero, so its predictions are uniform until it is fine-tuned).
    `classes` overrides or supplies the class names.
    """
    dev = _device(device)
    ckpt = open_checkpoint(path)
    if ckpt.kind != NPZ:
        return trained_from_checkpoint(ckpt, dev, model, classes)
    if model is None:
        raise ValueError(f"{path} is a Google ViT .npz, which does not record its model; pass model=<zoo name>")
    cfg = get_config(model)
    names = [str(c) for c in classes] if classes is not None else [f"class_{i}" for i in range(cfg.num_classes)]
    if len(names) != cfg.num_classes:
        cfg = cfg.replace(num_classes=len(names))
    net = build_model(cfg.model_dict())
    fix = "Pass the zoo name of a model with the .npz's backbone (depth, width, patch size)"
    load_state(net, ckpt.state_dict_for(net), f"checkpoint {path} ({ckpt.description})", fix)
    net.to(dev).eval()
    return TrainedModel(net, cfg, names, {"format": ckpt.kind})


def _frames(video: str | Path | np.ndarray, short_side: int, resize: str) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB frames of a video file (short side ``short_side``) or an array."""
    if isinstance(video, (str, Path)):
        from tokshift.engine.predict import decode_for_views

        if Path(video).is_dir():
            raise BadInput(f"video {video} is a folder, not a video file; give the video files inside it")
        if not Path(video).is_file():
            raise InputMissing(f"video {video} not found; check the path")
        frames, _log = decode_for_views(str(video), short_side, float(default("frames", "timeout")), resize)
        return frames
    arr = np.asarray(video)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8 or len(arr) == 0:
        raise ValueError(
            f"video array must be (T, H, W, 3) uint8 RGB frames with T >= 1, got shape {arr.shape} dtype {arr.dtype}"
        )
    return arr


def predict(
    model: TrainedModel | str | Path,
    video: str | Path | np.ndarray,
    top: int = 5,
    clips: int = default("evaluate", "clips"),
    crops: int = default("evaluate", "crops"),
    view_batch: int = default("evaluate", "view_batch"),
    resize: str = default("evaluate", "resize"),
) -> list[tuple[str, float]]:
    """The `top` (label, probability) pairs for one video, from the fused logits of clips x crops views.

    `model` is what `load` returns (or a checkpoint path to load); `video` a file
    (decoded with ffmpeg) or a (T, H, W, 3) uint8 RGB array. `resize` is how frames reach the
    crop size, as `tokshift predict --resize`: "linear" (fast) or "bicubic" (antialiased, as the
    original TokShift evaluated).
    """
    from tokshift.data.datasets import eval_views_from_frames
    from tokshift.data.transforms import check_resize
    from tokshift.engine.evaluate import view_logits
    from tokshift.engine.metrics import fuse_logits, topk

    check_resize(resize)
    trained: Any = model if isinstance(model, TrainedModel) else load(model)
    if top < 1:
        raise ValueError(f"top={top} must be >= 1")
    cfg = trained.config
    frames = _frames(video, cfg.img_size, resize)
    views = eval_views_from_frames(frames, cfg.num_frames, cfg.frame_stride, cfg.img_size, clips, crops, resize)
    device = next(trained.model.parameters()).device
    logits = view_logits(trained.model, torch.as_tensor(views), device, view_batch, None)
    idx, scores = topk(fuse_logits(logits).softmax(-1), top)
    return [(trained.classes[i], float(s)) for i, s in zip(idx, scores)]
