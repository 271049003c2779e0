"""Locate the ffmpeg binary and turn ``ffmpeg-python`` graphs into its command lines.

ffmpeg is found on ``PATH`` first (a cluster module or a system package is usually newer and
faster), then falls back to the static binary shipped by the ``imageio-ffmpeg`` wheel so a
plain ``pip install`` works everywhere. Every invocation is described as an ``ffmpeg-python``
graph (inputs, filters, output options) and compiled against that binary here, so filter
escaping and stream mapping are not hand-written. ffprobe is never required: stream facts
are read from ffmpeg's own log and from the frames it emits.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from typing import Any

from tokshift.errors import BadInput

__all__ = ["FFmpegNotFoundError", "compile_command", "ffmpeg_executable", "ffmpeg_version", "passthrough_options"]

ENV_VAR = "TOKSHIFT_FFMPEG"


class FFmpegNotFoundError(BadInput):
    """Raised when no usable ffmpeg binary exists."""


@functools.cache
def ffmpeg_executable() -> str:
    """Return the path of the ffmpeg binary: ``$TOKSHIFT_FFMPEG``, then ``PATH``, then imageio-ffmpeg."""
    override = os.environ.get(ENV_VAR)
    if override:
        if shutil.which(override) is None and not os.access(override, os.X_OK):
            raise FFmpegNotFoundError(
                f"{ENV_VAR}={override!r} is not an executable file; point it at an ffmpeg binary or unset it"
            )
        return shutil.which(override) or override
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:  # pragma: no cover - imageio-ffmpeg is a declared dependency
        imageio_ffmpeg = None
    if imageio_ffmpeg is not None:
        try:
            return imageio_ffmpeg.get_ffmpeg_exe()
        except RuntimeError:
            pass
    raise FFmpegNotFoundError(
        "ffmpeg was not found: install it (e.g. `apt-get install ffmpeg`, `module load ffmpeg`) "
        f"or `pip install imageio-ffmpeg`, or set {ENV_VAR} to the binary"
    )


@functools.cache
def ffmpeg_version(executable: str | None = None) -> tuple[int, int]:
    """Major and minor version of ffmpeg ((0, 0) for unparsable git builds), for option spelling."""
    exe = executable or ffmpeg_executable()
    out = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"ffmpeg version n?(\d+)\.(\d+)", out)
    if match is None:
        return (0, 0)
    return int(match.group(1)), int(match.group(2))


def passthrough_options(executable: str | None = None) -> dict[str, str]:
    """Output options that pass every decoded frame through once, in decode order (no dup/drop for VFR)."""
    major, minor = ffmpeg_version(executable)
    if (major, minor) >= (5, 1) or (major, minor) == (0, 0):
        return {"fps_mode": "passthrough"}
    return {"vsync": "0"}


def compile_command(
    output: Any, *global_args: str, overwrite: bool = False, executable: str | None = None
) -> list[str]:
    """The argv running the ``ffmpeg-python`` output ``output`` with the resolved binary.

    ``-hide_banner -nostdin`` are always added (no banner in logs, never read the terminal),
    followed by ``global_args``; ``overwrite`` adds ``-y``.
    """
    graph = output.global_args("-hide_banner", "-nostdin", *global_args)
    return graph.compile(cmd=executable or ffmpeg_executable(), overwrite_output=overwrite)
