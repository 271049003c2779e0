"""`tokshift predict` on inputs the model cannot judge well: real image and video files, a real
trained demo model. They are still predicted, with a warning that says why on stderr."""

from __future__ import annotations

import json
from pathlib import Path

from tests.engine_helpers import PackedDemo, TrainedDemo, run_cli_inprocess
from tokshift.errors import ExitCode


def test_still_images_short_videos_and_directories(
    trained_demo: TrainedDemo, packed_demo: PackedDemo, tmp_path: Path
) -> None:
    import numpy as np
    from PIL import Image

    from tokshift.data.demo import encode_h264

    rng = np.random.default_rng(0)
    image = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 255, (72, 96, 3), dtype=np.uint8)).save(image)
    one_frame = tmp_path / "one_frame.mp4"
    encode_h264(rng.integers(0, 255, (1, 64, 64, 3), dtype=np.uint8), one_frame)
    folder = tmp_path / "clips"
    folder.mkdir()
    good = sorted(packed_demo.videos.glob("val/*.mp4"))[0]

    res = run_cli_inprocess(
        "predict",
        *map(str, (image, one_frame, folder, good)),
        "--checkpoint",
        str(trained_demo.checkpoint),
        "--format",
        "json",
        "--clips",
        "2",
        "--crops",
        "1",
    )
    assert res.returncode == ExitCode.DATA_DAMAGED, res.stderr[-2000:]  # the directory could not be predicted
    preds = {Path(p["video"]).name: p for p in json.loads(res.stdout)["predictions"]}
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning: ")]

    # The demo model's clip spans (8 - 1) * 2 + 1 = 15 frames.
    assert len(preds["photo.jpg"]["top"]) == 4 and len(preds["one_frame.mp4"]["top"]) == 4
    (still,) = preds["photo.jpg"]["warnings"]
    assert "still image" in still and "unreliable" in still
    assert "image2 demuxer" in still or "jpeg_pipe demuxer" in still  # ffmpeg picks by name or by content
    (short,) = preds["one_frame.mp4"]["warnings"]
    assert "has 1 frame(s), fewer than the 15 that one clip spans" in short and "unreliable" in short
    assert warnings == [f"warning: {still}", f"warning: {short}"]
    assert preds[good.name]["warnings"] == [] and len(preds[good.name]["top"]) == 4
    assert "is a directory, not a video file" in preds["clips"]["error"]
    assert f"{folder}" in res.stderr and "is a directory" in res.stderr


def test_input_warnings_from_ffmpeg_log() -> None:
    from tokshift.engine.predict import input_warnings

    video_log = ["Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'a.mp4':"]
    assert input_warnings("a.mp4", 24, video_log, 8, 2) == []
    assert "has 14 frame(s)" in input_warnings("a.mp4", 14, video_log, 8, 2)[0]
    assert input_warnings("a.mp4", 15, video_log, 8, 2) == []  # exactly one clip
    png_log = ["Input #0, png_pipe, from 'x.png':"]
    assert "still image" in input_warnings("x.png", 1, png_log, 8, 2)[0]
    sequence_log = ["Input #0, image2, from 'frame_%04d.jpg':"]  # many images: a video
    assert input_warnings("frame_%04d.jpg", 40, sequence_log, 8, 2) == []
