"""`tokshift predict`: classify video files directly (ffmpeg decode, no packing).

An input the model cannot judge well still gets a prediction, with a warning on stderr
(and in the JSON output) that says why it is unreliable: a still image, or a video with
fewer frames than one clip spans, so frames repeat within the clip.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from tokshift.engine.evaluate import ViewLayout, view_logits
from tokshift.engine.metrics import fuse_logits, topk
from tokshift.engine.runtime import enable_crash_traces, resolve_amp, set_fused_attention
from tokshift.errors import BadInput, ExitCode
from tokshift.settings import default

log = logging.getLogger(__name__)

# ffmpeg's demuxers for single images: "image2" (files by extension) and "<codec>_pipe".
_IMAGE_DEMUXER = re.compile(r"^Input #0, (image2|\w+_pipe)\b")


@dataclass
class PredictOptions:
    videos: list[str]
    checkpoint: Path
    model: str | None = None  # zoo entry; needed for an original .pth
    classes: list[str] | None = None  # an original .pth's class names when not Kinetics-400's
    format: str = "text"
    clips: int = default("evaluate", "clips")
    crops: int = default("evaluate", "crops")
    resize: str = default("evaluate", "resize")  # linear (ffmpeg scales while decoding) or bicubic
    view_batch: int = default("evaluate", "view_batch")
    device: str = "auto"
    amp: str = "auto"
    top: int = 5
    timeout: float = float(default("frames", "timeout"))  # seconds without a frame before ffmpeg is killed


def input_warnings(path: str, frames: int, ffmpeg_log: list[str], num_frames: int, stride: int) -> list[str]:
    """Why a prediction from this decoded input is unreliable (empty when it is not)."""
    demuxer = next((m.group(1) for line in ffmpeg_log if (m := _IMAGE_DEMUXER.match(line.strip()))), None)
    if demuxer is not None and frames == 1:  # an image sequence (frame_%04d.jpg) is a video
        return [
            f"{path} is a still image (ffmpeg read it with the {demuxer} demuxer), not a video: the model "
            "sees one frame repeated, with no motion, so the prediction is unreliable"
        ]
    span = (num_frames - 1) * stride + 1
    if frames < span:
        return [
            f"{path} has {frames} frame(s), fewer than the {span} that one clip spans ({num_frames} frames "
            f"{stride} apart): frames repeat within each clip, so the prediction is unreliable"
        ]
    return []


def decode_for_views(
    path: str, size: int, timeout: float, resize: str = default("evaluate", "resize")
) -> tuple[np.ndarray, list[str]]:
    """Every frame of ``path`` at short side ``size``, and ffmpeg's log.

    ``linear`` lets ffmpeg scale while decoding (the fast path); ``bicubic`` decodes full frames
    and resizes each as it arrives (antialiased bicubic, as evaluation does), so a long
    high-resolution video never sits in memory at full size. The caller has checked ``resize``.
    """
    from tokshift.data.decode import VideoFrames
    from tokshift.data.transforms import resize_short_side

    if resize == "linear":
        with VideoFrames(path, short_side=size, timeout=timeout) as reader:
            frames = list(reader)
    else:
        with VideoFrames(path, short_side=None, timeout=timeout) as reader:
            frames = [resize_short_side(f, size, resize) for f in reader]
    return np.stack(frames), reader.log


def predict_videos(opts: PredictOptions, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print the top classes of each video; unreadable videos are reported and skipped,
    unreliable ones (see `input_warnings`) predicted with a warning on ``err``.

    ``out`` and ``err`` default to the sys.stdout and sys.stderr of the call (not of the import),
    so a caller that redirects them gets the output. Returns OK when every video was predicted,
    DATA_DAMAGED when some could not be read.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    from tokshift.data.datasets import eval_views_from_frames
    from tokshift.data.transforms import check_resize
    from tokshift.engine.distributed import pick_device
    from tokshift.engine.loading import load_trained_model
    from tokshift.engine.runtime import use_tf32

    enable_crash_traces()
    check_resize(opts.resize)  # before the first video: each would fail on its own otherwise
    if opts.format not in ("text", "json"):
        raise BadInput(f"--format {opts.format!r}: expected text or json")
    # A job given GPUs that CUDA cannot use fails here (GpuUnusable, exit 3), before any model loads.
    device = pick_device(opts.device)
    amp_dtype = resolve_amp(opts.amp, device)  # fp16 on a GPU without bf16; explicit bf16 there fails
    use_tf32(device, amp_dtype)
    trained = load_trained_model(opts.checkpoint, device, model_name=opts.model, classes=opts.classes)
    set_fused_attention(trained.model, True)
    cfg, classes = trained.config, trained.classes
    layout = ViewLayout(opts.clips, opts.crops)
    results: list[dict[str, Any]] = []
    failed = 0
    for path in opts.videos:
        try:
            frames, ffmpeg_log = decode_for_views(path, cfg.img_size, opts.timeout, opts.resize)
            views = eval_views_from_frames(
                frames,
                cfg.num_frames,
                cfg.frame_stride,
                cfg.img_size,
                num_clips=opts.clips,
                num_crops=opts.crops,
                resize=opts.resize,
            )
            logits = view_logits(trained.model, torch.as_tensor(views), device, opts.view_batch, amp_dtype)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
            failed += 1
            msg = f"cannot predict {path}: {type(exc).__name__}: {exc}"
            print(f"tokshift predict: error: {msg}", file=err)
            results.append({"video": path, "error": msg})
            continue
        warnings = input_warnings(path, len(frames), ffmpeg_log, cfg.num_frames, cfg.frame_stride)
        for warning in warnings:
            print(f"warning: {warning}", file=err)
        probs = fuse_logits(logits).softmax(-1)
        idx, scores = topk(probs, opts.top)
        top = [{"label": classes[i], "index": i, "score": s} for i, s in zip(idx, scores)]
        results.append({"video": path, "views": layout.views, "top": top, "warnings": warnings})
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
                "resize": opts.resize,
                "predictions": results,
            },
            out,
            indent=2,
        )
        out.write("\n")
    return ExitCode.DATA_DAMAGED if failed else ExitCode.OK
