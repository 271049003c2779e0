"""Decode a video into RGB frames by streaming ffmpeg's output, with a hang watchdog.

ffmpeg streams frames to its stdout in a self-describing format, so the frame size is known
without ffprobe and nothing touches the disk: binary PPM (``P6`` header + RGB bytes per frame)
for RGB frames, or YUV4MPEG2 with full-range BT.601 4:2:0 planes, which a JPEG encoder takes
as they are (no colour conversion, half the bytes of RGB). Rotated phone videos come out
upright (ffmpeg applies the display matrix by default). Frames pass through once in decode
order (``-fps_mode passthrough``), so variable-frame-rate videos keep every decoded frame and
their order. Bad input raises :class:`VideoDecodeError` with a short reason.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import ffmpeg
import numpy as np

from tokshift.data.ffmpeg import compile_command, ffmpeg_executable, passthrough_options
from tokshift.errors import DataDamaged
from tokshift.settings import default

__all__ = [
    "VideoDecodeError",
    "VideoFrames",
    "decode_video",
    "ffmpeg_decode_command",
    "scale_short_side",
]

DEFAULT_TIMEOUT = float(default("frames", "timeout"))


class VideoDecodeError(DataDamaged):
    """A video could not be decoded; ``reason`` is a one-line cause suitable for a failures CSV."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(
            f"cannot decode video {self.path!r}: {reason}. Check that the file is a complete, "
            "readable video with a video stream (try playing it with ffmpeg/ffplay)."
        )

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # keeps path and reason across processes
        return (VideoDecodeError, (self.path, self.reason))


def scale_short_side(stream: Any, short_side: int) -> Any:
    """Resize the (already upright) ``ffmpeg-python`` stream so its short side is ``short_side``, keeping aspect."""
    s = int(short_side)
    if s <= 0:
        raise ValueError(f"short_side must be a positive number of pixels, got {short_side}")
    return stream.filter("scale", w=f"if(gte(iw,ih),-1,{s})", h=f"if(gte(iw,ih),{s},-1)")


# Output options per frame format: PPM images, or YUV4MPEG2 (its 4:2:0 "C420jpeg" needs -strict -1).
_FORMATS = {
    "rgb": {"format": "image2pipe", "vcodec": "ppm"},
    "yuv420": {"format": "yuv4mpegpipe", "strict": "-1"},
}


def ffmpeg_decode_command(
    path: str | os.PathLike[str], short_side: int | None, threads: int = 1, pixel_format: str = "rgb"
) -> list[str]:
    """The ffmpeg command streaming upright frames of the first video stream to stdout.

    ``pixel_format`` "rgb": PPM frames; "yuv420": YUV4MPEG2, full-range BT.601 (JPEG's YCbCr).
    Only that stream is mapped (no audio, subtitles or data), and filters run single-threaded:
    one packing worker is one core.
    """
    if pixel_format not in _FORMATS:
        raise ValueError(f"pixel_format must be 'rgb' or 'yuv420', got {pixel_format!r}")
    exe = ffmpeg_executable()
    stream = ffmpeg.input(os.fspath(path), threads=threads)["v:0"]
    if short_side is not None:
        stream = scale_short_side(stream, short_side)
    if pixel_format == "yuv420":
        stream = stream.filter("scale", out_range="full", out_color_matrix="bt601").filter("format", "yuvj420p")
    output = stream.output("pipe:", **_FORMATS[pixel_format], **passthrough_options(exe))
    log = ("-nostats", "-loglevel", "info", "-filter_complex_threads", "1")
    return compile_command(output, *log, executable=exe)


_FPS_RE = re.compile(r"([\d.]+)(k?) (fps|tbr)")

# Substrings of ffmpeg's log mapped to short, user-facing reasons (first match wins).
_REASONS: tuple[tuple[str, str], ...] = (
    ("No such file or directory", "file not found"),
    ("Permission denied", "permission denied"),
    ("matches no streams", "no video stream (audio-only or data file)"),
    ("does not contain any stream", "no video stream (audio-only or data file)"),
    ("moov atom not found", "corrupt or truncated file (no moov atom)"),
    ("Invalid data found when processing input", "invalid data: corrupt file or not a video"),
    ("End of file", "truncated file (unexpected end of file)"),
)


def _parse_fps(lines: list[str]) -> float:
    """Frame rate of the first input video stream from ffmpeg's log; 0.0 when not stated."""
    for line in lines:
        if line.lstrip().startswith("Output #"):
            break
        if "Stream #" in line and "Video:" in line:
            found = {kind: (float(num) * (1000.0 if k else 1.0)) for num, k, kind in _FPS_RE.findall(line)}
            return float(found.get("fps", found.get("tbr", 0.0)))
    return 0.0


def _classify(returncode: int, log: list[str]) -> str:
    text = "\n".join(log)
    for needle, reason in _REASONS:
        if needle in text:
            return reason
    last = next((ln.strip() for ln in reversed(log) if ln.strip()), "no message")
    return f"ffmpeg exited with code {returncode}: {last[:200]}"


class VideoFrames:
    """Iterate the upright frames of one video; use as a context manager.

    Yields (H, W, 3) uint8 RGB arrays, or with ``pixel_format="yuv420"`` ``(Y, U, V)`` planes
    (full-range BT.601, chroma halved and rounded up) ready for a JPEG encoder.
    ``timeout`` is an inactivity limit: ffmpeg is killed when no frame arrives for that many
    seconds (a hung decoder or a blocking input), so long videos are never cut short.
    After iteration, ``fps``, ``width`` and ``height`` describe the output frames.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        short_side: int | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        threads: int = 1,
        pixel_format: str = "rgb",
    ) -> None:
        self.path = Path(path)
        self.short_side = short_side
        self.timeout = timeout
        self.threads = threads
        self.pixel_format = pixel_format
        self.fps = 0.0
        self.width = 0
        self.height = 0
        self.count = 0
        self.timed_out = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_head: list[str] = []
        self._log_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._threads: list[threading.Thread] = []
        self._done = threading.Event()
        self._last_progress = time.monotonic()

    # -- process plumbing -------------------------------------------------------------------
    def __enter__(self) -> VideoFrames:
        self._precheck()
        self._proc = subprocess.Popen(
            ffmpeg_decode_command(self.path, self.short_side, self.threads, self.pixel_format),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=1 << 20,
        )
        self._last_progress = time.monotonic()
        self._threads = [threading.Thread(target=self._drain_log, daemon=True)]
        if self.timeout is not None and self.timeout > 0:
            self._threads.append(threading.Thread(target=self._watchdog, daemon=True))
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop ffmpeg (if still running) and reap its helper threads."""
        self._done.set()
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=30)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
        for t in self._threads:
            t.join(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()

    def _precheck(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise VideoDecodeError(self.path, "file not found") from None
        except OSError as err:
            raise VideoDecodeError(self.path, f"cannot stat file ({err.strerror})") from None
        if self.path.is_dir():
            raise VideoDecodeError(self.path, "is a directory, not a video file")
        if st.st_size == 0 and self.path.is_file():
            raise VideoDecodeError(self.path, "empty file (0 bytes)")

    def _drain_log(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for raw in self._proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if len(self._log_head) < 200:
                self._log_head.append(line)
            else:
                self._log_tail.append(line)

    def _watchdog(self) -> None:
        assert self._proc is not None and self.timeout is not None
        while not self._done.wait(min(0.5, self.timeout / 4)):
            if time.monotonic() - self._last_progress > self.timeout and self._proc.poll() is None:
                self.timed_out = True
                self._proc.kill()
                return

    # -- frames -----------------------------------------------------------------------------
    def _read_header(self, stream: BinaryIO) -> tuple[int, int] | None:
        magic = stream.readline()
        if not magic:
            return None
        if magic.strip() != b"P6":
            raise VideoDecodeError(self.path, f"unexpected frame header {magic[:16]!r} from ffmpeg")
        dims = stream.readline().split()
        maxval = stream.readline().strip()
        if len(dims) != 2 or maxval != b"255":
            raise VideoDecodeError(self.path, "malformed PPM frame header from ffmpeg")
        return int(dims[0]), int(dims[1])

    def __iter__(self) -> Iterator[Any]:
        if self._proc is None:
            raise RuntimeError("use VideoFrames as a context manager: `with VideoFrames(path) as frames:`")
        stream = self._proc.stdout
        assert stream is not None
        frames = self._iter_y4m(stream) if self.pixel_format == "yuv420" else self._iter_ppm(stream)
        for frame in frames:
            self._last_progress = time.monotonic()
            self.count += 1
            yield frame
        self._finish()

    def _iter_ppm(self, stream: BinaryIO) -> Iterator[np.ndarray]:
        while True:
            header = self._read_header(stream)
            if header is None:
                return
            w, h = header
            frame = np.empty((h, w, 3), dtype=np.uint8)
            if stream.readinto(memoryview(frame).cast("B")) != frame.nbytes:
                return  # ffmpeg was killed or died mid-frame; reported by _finish
            self.width, self.height = w, h
            yield frame

    def _iter_y4m(self, stream: BinaryIO) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        header = stream.readline()
        if not header:
            return
        if not header.startswith(b"YUV4MPEG2"):
            raise VideoDecodeError(self.path, f"unexpected stream header {header[:20]!r} from ffmpeg")
        fields = {tok[:1]: tok[1:] for tok in header.split()[1:]}
        w, h = int(fields[b"W"]), int(fields[b"H"])
        if not fields.get(b"C", b"420").startswith(b"420"):
            raise VideoDecodeError(self.path, f"unexpected chroma format {fields.get(b'C')!r} from ffmpeg")
        cw, ch = (w + 1) // 2, (h + 1) // 2
        self.width, self.height = w, h
        while True:
            marker = stream.readline()
            if not marker:
                return
            if not marker.startswith(b"FRAME"):
                raise VideoDecodeError(self.path, f"malformed YUV4MPEG2 frame marker {marker[:16]!r}")
            buf = np.empty(w * h + 2 * cw * ch, dtype=np.uint8)
            if stream.readinto(memoryview(buf)) != buf.nbytes:
                return
            y = buf[: w * h].reshape(h, w)
            u = buf[w * h : w * h + cw * ch].reshape(ch, cw)
            v = buf[w * h + cw * ch :].reshape(ch, cw)
            yield y, u, v

    def _finish(self) -> None:
        assert self._proc is not None
        rc = self._proc.wait()
        self._done.set()
        for t in self._threads:
            t.join(timeout=5)
        log = self._log_head + list(self._log_tail)
        self.fps = _parse_fps(self._log_head)
        if self.timed_out:
            raise VideoDecodeError(
                self.path, f"ffmpeg produced no frame for {self.timeout:g} s and was killed (hung decode)"
            )
        if rc != 0:
            raise VideoDecodeError(self.path, _classify(rc, log))
        if self.count == 0:
            raise VideoDecodeError(self.path, "no frames decoded (zero-frame video)")

    @property
    def log(self) -> list[str]:
        """ffmpeg's log lines (the first 200 and the last 40)."""
        return self._log_head + list(self._log_tail)


def decode_video(
    path: str | os.PathLike[str], short_side: int | None = None, timeout: float = DEFAULT_TIMEOUT
) -> tuple[np.ndarray, float]:
    """Decode every frame of ``path`` (short side resized to ``short_side`` when given).

    Returns ``(frames (N, H, W, 3) uint8 RGB, fps)``; raises :class:`VideoDecodeError`.
    """
    with VideoFrames(path, short_side=short_side, timeout=timeout) as reader:
        frames = list(reader)
    return np.stack(frames), reader.fps
