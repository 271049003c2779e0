"""JPEG encode/decode for packed frames, all through libjpeg-turbo.

Packing encodes ffmpeg's full-range 4:2:0 planes directly (simplejpeg's YUV-plane encoder: no
colour conversion or chroma downsampling, the cheapest path measured in bench/RESULTS_data.md).
RGB frames (tests, benchmarks) are encoded by OpenCV. Decoding uses simplejpeg's fast
DCT/upsampling flags, the fastest RGB decode measured; `accurate=True` turns both off, which
decodes exactly as Pillow does (accurate integer IDCT, fancy upsampling): the faithful
evaluation of the original's checkpoints (docs/reference.md, "Faithful evaluation").
"""

from __future__ import annotations

import cv2
import numpy as np
import simplejpeg

__all__ = ["decode_rgb", "encode_rgb", "encode_yuv420", "jpeg_size"]

cv2.setNumThreads(1)


def encode_rgb(frame: np.ndarray, quality: int) -> bytes:
    """Encode an (H, W, 3) uint8 RGB frame as a baseline 4:2:0 JPEG at ``quality`` (1-100)."""
    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV fails only on invalid arrays
        raise ValueError(f"JPEG encoding failed for a frame of shape {frame.shape}")
    return buf.tobytes()


def encode_yuv420(y: np.ndarray, u: np.ndarray, v: np.ndarray, quality: int) -> bytes:
    """Encode full-range BT.601 4:2:0 planes (JPEG's own YCbCr) as a baseline JPEG."""
    return simplejpeg.encode_jpeg_yuv_planes(y, u, v, quality=int(quality))


def decode_rgb(data: bytes | memoryview, accurate: bool = False) -> np.ndarray:
    """Decode JPEG bytes to an (H, W, 3) uint8 RGB array: fast DCT and upsampling, or with
    `accurate` Pillow's decode (1.6-3 grey levels closer to it on average, up to ~40)."""
    fast = not accurate
    return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=fast, fastupsample=fast)


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG header without decoding the pixels."""
    buf = bytes(data[:65536])
    pos = 2
    if buf[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG image (missing SOI marker)")
    while pos + 9 < len(buf):
        if buf[pos] != 0xFF:
            pos += 1
            continue
        marker = buf[pos + 1]
        if marker in _SOF_MARKERS:
            height = int.from_bytes(buf[pos + 5 : pos + 7], "big")
            width = int.from_bytes(buf[pos + 7 : pos + 9], "big")
            return width, height
        if marker == 0xFF or 0xD0 <= marker <= 0xD9:
            pos += 1 if marker == 0xFF else 2
            continue
        pos += 2 + int.from_bytes(buf[pos + 2 : pos + 4], "big")
    raise ValueError("JPEG header without a frame (SOF) marker")


_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
