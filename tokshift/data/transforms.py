"""Pixel operations on uint8 clips: crop-first resizing, flips, colour jitter, normalisation.

Clips stay uint8 on the CPU (a quarter of the bytes of float and no 360 us/frame normalisation
in the workers); :func:`normalize` turns them into floats on whatever device they reach.
Training resizes bilinearly (OpenCV ``INTER_LINEAR``), only the source region under the
random crop (crop-first, 1.5x faster than resizing the whole frame); it equals resize-then-crop
up to snapping the region to whole source pixels (at most half a pixel). Evaluation resizes whole
frames with one of :data:`RESIZE_METHODS`: ``linear`` (OpenCV bilinear, the fast default) or
``bicubic`` (antialiased, as Pillow's ``BICUBIC`` that the original TokShift evaluates with).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from tokshift.errors import BadInput
from tokshift.settings import choices, default

__all__ = [
    "AugmentParams",
    "ClipAugment",
    "JITTER_RANGES",
    "RESIZE_METHODS",
    "adjust_brightness",
    "adjust_gamma",
    "adjust_hue",
    "adjust_saturation",
    "check_resize",
    "normalize",
    "resize_short_side",
    "short_side_size",
]

cv2.setNumThreads(1)

# The original's jitter ranges: brightness [0.5, 2], saturation [0.5, 3], gamma [0.8, 1.2], hue [-0.5, 0.5].
JITTER_RANGES = {"brightness": (0.5, 2.0), "saturation": (0.5, 3.0), "gamma": (0.8, 1.2), "hue": (-0.5, 0.5)}

# Evaluation resizes: OpenCV bilinear (fast) or antialiased bicubic (the original's Pillow BICUBIC).
# The config schema's list (`evaluate.resize`) is the one list of names; `resize_short_side` implements each.
RESIZE_METHODS: tuple[str, ...] = tuple(choices("evaluate", "resize"))


def normalize(x: torch.Tensor) -> torch.Tensor:
    """(x/255 - 0.5)/0.5 as float32, on x's device; accepts any shape."""
    return (x.to(torch.float32) / 255.0 - 0.5) / 0.5


def short_side_size(h: int, w: int, short: int) -> tuple[int, int]:
    """(new_h, new_w) with the short side ``short`` and the long side scaled (floored) to keep the aspect."""
    if h <= w:
        return short, max(short, int(w * short / h))
    return max(short, int(h * short / w)), short


def check_resize(method: str) -> str:
    """``method`` when it is one of :data:`RESIZE_METHODS`, else a ValueError naming the choices.

    Called where a method enters (options, public functions), so a typo fails before any work
    instead of as one error per video.
    """
    if method not in RESIZE_METHODS:
        raise BadInput(f"resize method {method!r} is not one of {', '.join(RESIZE_METHODS)}")
    return method


def resize_short_side(img: np.ndarray, short: int, method: str = default("evaluate", "resize")) -> np.ndarray:
    """Resize an (H, W, 3) uint8 frame to short side ``short`` (no copy when already there).

    ``linear`` is OpenCV's bilinear (no antialiasing); ``bicubic`` is antialiased bicubic
    (a = -0.5, support widened by the scale when shrinking), which matches Pillow's
    ``resize(..., Image.BICUBIC)`` to within rounding and is 3x faster than Pillow. Its result
    is an (H, W, 3) view of a channels-first buffer: making it contiguous would cost 70% of the
    resize again, and evaluation cuts channels-first crops from it.
    """
    h, w = img.shape[:2]
    nh, nw = short_side_size(h, w, short)
    if (nh, nw) == (h, w):
        return img
    if method not in _RESIZERS:
        check_resize(method)  # raises, naming the methods
    return _RESIZERS[method](img, nh, nw)


def _resize_linear(img: np.ndarray, nh: int, nw: int) -> np.ndarray:
    return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)


def _resize_bicubic(img: np.ndarray, nh: int, nw: int) -> np.ndarray:
    # Interpolating uint8 directly uses Pillow's fixed-point weights (float32 then rounding is off by 0.2 grey levels).
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).unsqueeze(0)
    y = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).numpy()


# One implementation per name of RESIZE_METHODS (a test checks that they agree).
_RESIZERS = {"linear": _resize_linear, "bicubic": _resize_bicubic}


def adjust_brightness(clip: np.ndarray, factor: float) -> np.ndarray:
    """Scale intensities by ``factor`` (blend with black), saturating at 255."""
    lut = np.clip(np.arange(256, dtype=np.float32) * factor + 0.5, 0, 255).astype(np.uint8)
    return _lut(clip, lut)


def adjust_gamma(clip: np.ndarray, gamma: float) -> np.ndarray:
    """255 * (x/255) ** gamma."""
    lut = np.clip(255.0 * (np.arange(256, dtype=np.float64) / 255.0) ** gamma + 0.5, 0, 255).astype(np.uint8)
    return _lut(clip, lut)


def adjust_saturation(clip: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the luma image (ITU-R 601): factor 0 is grey, 1 is unchanged."""
    x = clip.astype(np.float32)
    gray = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    out = gray[..., None] + factor * (x - gray[..., None])
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def adjust_hue(clip: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the hue by ``shift`` turns (in [-0.5, 0.5]) in 8-bit HSV, as PIL/torchvision do."""
    flat = np.ascontiguousarray(clip).reshape(-1, clip.shape[-2], 3)
    hsv = cv2.cvtColor(flat, cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 255))).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL).reshape(clip.shape)


def _lut(clip: np.ndarray, lut: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(clip).reshape(-1, clip.shape[-2], clip.shape[-1])
    return cv2.LUT(flat, lut).reshape(clip.shape)


@dataclass(frozen=True)
class ClipAugment:
    """Training augmentation of one clip; parameters are drawn once per clip from ``rng``.

    Random short side in ``short_side_range`` (inclusive), random ``crop`` x ``crop`` crop,
    horizontal flip with ``flip_p``, then brightness, saturation, gamma and hue jitter each with
    ``jitter_p`` (the original's order and ranges).
    """

    crop: int
    short_side_range: tuple[int, int]
    flip_p: float = 0.5
    jitter_p: float = 0.1

    def __post_init__(self) -> None:
        lo, hi = self.short_side_range
        if not self.crop <= lo <= hi:
            raise BadInput(f"short_side_range {self.short_side_range} must satisfy crop ({self.crop}) <= low <= high")

    def draw(self, h: int, w: int, rng: np.random.Generator) -> AugmentParams:
        """Draw the clip's parameters for frames of size ``h`` x ``w`` (always the same number of draws)."""
        lo, hi = self.short_side_range
        short = int(rng.integers(lo, hi + 1))
        nh, nw = short_side_size(h, w, short)
        y = int(rng.integers(0, nh - self.crop + 1))
        x = int(rng.integers(0, nw - self.crop + 1))
        flip = bool(rng.random() < self.flip_p)
        jitter = []
        for name in ("brightness", "saturation", "gamma", "hue"):
            apply = bool(rng.random() < self.jitter_p)
            value = float(rng.uniform(*JITTER_RANGES[name]))
            if apply:
                jitter.append((name, value))
        return AugmentParams(short, y, x, flip, tuple(jitter))

    def apply(self, frames: Sequence[np.ndarray], p: AugmentParams) -> np.ndarray:
        """Augment decoded (H, W, 3) frames with fixed parameters -> (T, crop, crop, 3) uint8."""
        h, w = frames[0].shape[:2]
        nh, nw = short_side_size(h, w, p.short_side)
        # Crop-first: resize only the source region under the crop, with the full-frame scale per axis.
        sy, sx = nh / h, nw / w
        # The source region is snapped to whole source pixels (at most half a pixel off).
        rh = min(max(1, int(round(self.crop / sy))), h)
        rw = min(max(1, int(round(self.crop / sx))), w)
        y0 = min(int(round(p.y / sy)), h - rh)
        x0 = min(int(round(p.x / sx)), w - rw)
        out = np.empty((len(frames), self.crop, self.crop, 3), dtype=np.uint8)
        for t, frame in enumerate(frames):
            if frame.shape[:2] != (h, w):  # a mid-stream resolution change: bring it to the first size
                frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
            cv2.resize(
                frame[y0 : y0 + rh, x0 : x0 + rw], (self.crop, self.crop), dst=out[t], interpolation=cv2.INTER_LINEAR
            )
        if p.flip:
            out = out[:, :, ::-1]
        for name, value in p.jitter:
            out = _JITTERS[name](out, value)
        return np.ascontiguousarray(out)

    def __call__(self, frames: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """Draw parameters from ``rng`` and augment one clip -> (T, crop, crop, 3) uint8."""
        h, w = frames[0].shape[:2]
        return self.apply(frames, self.draw(h, w, rng))


@dataclass(frozen=True)
class AugmentParams:
    """One clip's augmentation: short side, crop corner in the resized frame, flip, applied jitters."""

    short_side: int
    y: int
    x: int
    flip: bool
    jitter: tuple[tuple[str, float], ...]


_JITTERS = {"brightness": adjust_brightness, "saturation": adjust_saturation, "gamma": adjust_gamma, "hue": adjust_hue}
