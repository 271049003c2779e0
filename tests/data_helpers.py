"""Real test videos made with ffmpeg (numbered frames, odd shapes, rotation, VFR, broken files)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

from tokshift.data.ffmpeg import ffmpeg_executable


def numbered_frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """(n, h, w, 3) frames: a smooth random background plus a bar whose brightness encodes the index."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 90 + 50 * np.sin(xx / max(w, 1) * 6.28 + rng.uniform(0, 6.28))[..., None] * np.array([1.0, 0.6, 0.3])
    base = base + 40 * (yy / max(h, 1))[..., None]
    frames = np.repeat(base[None], n, axis=0)
    bar = max(4, h // 4)
    for t in range(n):
        frames[t, :bar, :, :] = (t * 37) % 256  # brightness code of the frame index
    return np.clip(frames, 0, 255).astype(np.uint8)


def frame_code(frame: np.ndarray) -> int:
    """Recover the code written by :func:`numbered_frames` from a decoded frame."""
    bar = max(4, frame.shape[0] // 4)
    return int(round(float(frame[1 : bar - 1, 2:-2].mean())))


def encode(
    frames: np.ndarray,
    out: Path,
    fps: float = 10,
    codec: str = "libx264",
    extra: list[str] | None = None,
    pre_input: list[str] | None = None,
) -> Path:
    """Encode RGB frames to ``out`` with ffmpeg."""
    n, h, w, _ = frames.shape
    cmd = [
        ffmpeg_executable(),
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        *(pre_input or []),
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{w}x{h}",
        "-r",
        str(fps),
        "-i",
        "-",
        "-c:v",
        codec,
        "-pix_fmt",
        "yuv420p",
        "-threads",
        "1",
        *(extra or []),
        str(out),
    ]
    subprocess.run(cmd, input=frames.tobytes(), check=True, capture_output=True)
    return out


def ffmpeg(*args: str) -> None:
    subprocess.run(
        [ffmpeg_executable(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True, capture_output=True
    )


def rotate_metadata(src: Path, out: Path, degrees: int = 90) -> Path:
    """Copy ``src`` with a display-matrix rotation (as phones record portrait video)."""
    ffmpeg("-display_rotation", str(degrees), "-i", str(src), "-c", "copy", str(out))
    return out


def vfr_video(out: Path, n: int = 12, h: int = 48, w: int = 64) -> Path:
    """A variable-frame-rate mp4: frame gaps alternate between 1/10 s and 3/10 s."""
    frames = numbered_frames(n, h, w, seed=3)
    expr = "(N+2*floor(N/2))/(10*TB)"
    return encode(frames, out, fps=10, extra=["-vf", f"setpts='{expr}'", "-fps_mode", "vfr"])


def audio_only(out: Path) -> Path:
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(out))
    return out


def corrupt_file(out: Path, size: int = 4096, seed: int = 0) -> Path:
    out.write_bytes(np.random.default_rng(seed).bytes(size))
    return out


def truncated_copy(src: Path, out: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def reference_decode(path: Path, width: int, height: int) -> np.ndarray:
    """Decode straight through ffmpeg to raw RGB at ``width`` x ``height`` (every frame, decode order)."""
    cmd = [
        ffmpeg_executable(),
        "-hide_banner",
        "-loglevel",
        "error",
        "-i",
        str(path),
        "-map",
        "0:v:0",
        "-fps_mode",
        "passthrough",
        "-vf",
        f"scale={width}:{height}",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ]
    raw = subprocess.run(cmd, check=True, capture_output=True).stdout
    frame_bytes = width * height * 3
    assert len(raw) % frame_bytes == 0
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows(rows)
    return path


def env_without_ffmpeg_on_path() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = "/usr/bin:/bin"
    return env
