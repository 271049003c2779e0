"""`tokshift predict`: classify video files directly (ffmpeg decode, no packing)."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from tokshift.engine.evaluate import ViewLayout, view_logits
from tokshift.engine.metrics import fuse_logits, topk
from tokshift.engine.runtime import enable_crash_traces, resolve_amp, set_fused_attention

log = logging.getLogger(__name__)


@dataclass
class PredictOptions:
    videos: list[str]
    checkpoint: Path
    format: str = "text"
    clips: int = 10
    crops: int = 3
    view_batch: int = 30
    device: str = "auto"
    amp: str = "auto"
    top: int = 5
    timeout: float = 600.0


def predict_videos(opts: PredictOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Print the top classes of each video; unreadable videos are reported and skipped.

    Returns 0 when every video was predicted, 1 when some could not be read.
    """
    from tokshift.data.datasets import eval_views_from_frames
    from tokshift.data.decode import decode_video
    from tokshift.engine.distributed import pick_device
    from tokshift.engine.loading import load_trained_model

    enable_crash_traces()
    if opts.format not in ("text", "json"):
        raise ValueError(f"--format {opts.format!r}: expected text or json")
    device = pick_device(opts.device)
    trained = load_trained_model(opts.checkpoint, device)
    set_fused_attention(trained.model, True)
    cfg, classes = trained.config, trained.classes
    amp_dtype = resolve_amp(opts.amp, device)
    layout = ViewLayout(opts.clips, opts.crops)
    results: list[dict[str, Any]] = []
    failed = 0
    for path in opts.videos:
        try:
            if not Path(path).is_file():
                raise FileNotFoundError("no such file")
            frames, _fps = decode_video(path, cfg.img_size, opts.timeout)
            views = eval_views_from_frames(
                frames, cfg.num_frames, cfg.frame_stride, cfg.img_size, num_clips=opts.clips, num_crops=opts.crops
            )
            logits = view_logits(trained.model, torch.as_tensor(views), device, opts.view_batch, amp_dtype)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
            failed += 1
            msg = f"cannot predict {path}: {type(exc).__name__}: {exc}"
            print(f"error: {msg}", file=err)
            results.append({"video": path, "error": msg})
            continue
        probs = fuse_logits(logits).softmax(-1)
        idx, scores = topk(probs, opts.top)
        top = [{"label": classes[i], "index": i, "score": s} for i, s in zip(idx, scores)]
        results.append({"video": path, "views": layout.views, "top": top})
        if opts.format == "text":
            print(path, file=out)
            for rank, t in enumerate(top, 1):
                print(f"  {rank}. {t['label']:<30s} {t['score']:.4f}", file=out)
            out.flush()
    if opts.format == "json":
        json.dump(
            {
                "checkpoint": str(opts.checkpoint),
                "model": cfg.name,
                "clips": opts.clips,
                "crops": opts.crops,
                "predictions": results,
            },
            out,
            indent=2,
        )
        out.write("\n")
    return 1 if failed else 0
