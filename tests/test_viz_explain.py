"""`tokshift explain` on tiny random-weight demo models: the arrays it returns are the model's own
numbers, the attention is the attention timm computes, switching the shift off gives the plain ViT,
and the figure has one panel per frame and pass."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tokshift.data.demo import encode_h264, render_clip
from tokshift.zoo import get_config

if TYPE_CHECKING:
    import torch

    from tokshift.engine.loading import TrainedModel


CLASSES = ["brighten", "darken", "disc_grow", "disc_shrink"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _trained(name: str, seed: int = 0) -> TrainedModel:
    import torch

    from tokshift.engine.loading import TrainedModel, build_model

    torch.manual_seed(seed)
    cfg = get_config(name)
    model = build_model(cfg.model_dict()).eval()
    with torch.no_grad():  # a random head, so the classes differ (timm starts it at zero)
        model.head.weight.normal_(0, 0.5)
    return TrainedModel(model, cfg, list(CLASSES), {})


def _clip(seed: int = 3) -> torch.Tensor:
    import torch

    frames = render_clip("disc_grow", np.random.default_rng(seed), frames=8, size=64)
    return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()


def _video(view: torch.Tensor) -> torch.Tensor:
    from tokshift.data.transforms import normalize

    return normalize(view[None])


def test_frame_logits_average_to_the_models_video_logit_and_hooks_change_nothing() -> None:
    import torch

    from tokshift.viz.explain import explain_view

    trained = _trained("demo_tokshift")
    view = _clip()
    with torch.no_grad():
        before = trained.model(_video(view))
    e = explain_view(trained, view, "clip", method="rollout")
    with torch.no_grad():
        after = trained.model(_video(view))
    assert torch.equal(before, after)  # no hook left behind, no state changed
    on = e.shift_on
    assert on.frame_logits.shape == (8, 4) and on.logits.shape == (4,)
    np.testing.assert_allclose(on.frame_logits.mean(axis=0), before[0].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(on.probs.sum(), 1.0, rtol=1e-6)
    assert e.frames.shape == (8, 64, 64, 3) and e.frames.dtype == np.uint8
    assert np.array_equal(e.frames, view.permute(0, 2, 3, 1).numpy())


def test_last_block_attention_is_what_timm_computes() -> None:
    """The recomputed map equals the softmax timm's own (non-fused) attention path passes to its dropout."""
    import torch

    from tokshift.engine.runtime import set_fused_attention
    from tokshift.viz.explain import explain_view

    trained = _trained("demo_vit")
    view = _clip()
    e = explain_view(trained, view, "clip", method="last")
    set_fused_attention(trained.model, False)
    seen: list[torch.Tensor] = []
    handle = trained.model.blocks[-1].attn.attn_drop.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        trained.model(_video(view))
    handle.remove()
    expected = seen[0].mean(dim=1)[:, 0, 1:]  # (T, patches): heads averaged, [CLS] row
    expected = expected / expected.sum(dim=-1, keepdim=True)
    got = torch.from_numpy(e.shift_on.attention).flatten(1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert e.shift_on.attention.shape == (8, 4, 4)


def test_rollout_maps_are_distributions_that_differ_from_the_last_block() -> None:
    from tokshift.viz.explain import explain_view

    trained = _trained("demo_vit")
    view = _clip()
    rollout = explain_view(trained, view, "clip", method="rollout").shift_on.attention
    last = explain_view(trained, view, "clip", method="last").shift_on.attention
    assert (rollout >= 0).all()
    np.testing.assert_allclose(rollout.reshape(8, -1).sum(axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(rollout, last)
    with pytest.raises(ValueError, match="rollout, last"):
        explain_view(trained, view, "clip", method="mean")


def test_shift_off_is_the_per_frame_vit_with_the_same_weights() -> None:
    import torch

    from tokshift.engine.loading import build_model
    from tokshift.models import shift_disabled
    from tokshift.viz.explain import explain_view

    tokshift = _trained("demo_tokshift")
    vit = build_model(get_config("demo_vit").model_dict()).eval()
    vit.load_state_dict(tokshift.model.state_dict())
    x = _video(_clip())
    with torch.no_grad():
        shifted = tokshift.model(x)
        with shift_disabled(tokshift.model) as n:
            off = tokshift.model(x)
        restored = tokshift.model(x)
        plain = vit(x)
    assert n == 4  # every block of the depth-4 demo model
    torch.testing.assert_close(off, plain, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(shifted, plain, atol=1e-4)
    assert torch.equal(restored, shifted)
    e = explain_view(tokshift, _clip(), "clip")
    assert [p.shift for p in e.passes] == [True, False]
    np.testing.assert_allclose(e.shift_off.logits, plain[0].numpy(), rtol=1e-5, atol=1e-5)


def test_figure_has_one_panel_per_frame_and_pass(tmp_path: Path) -> None:
    from tokshift.viz.explain import explain_view
    from tokshift.viz.explain_figure import FRAME_GID, render_explanation, save_explanation

    for name, rows in (("demo_tokshift", 2), ("demo_vit", 1)):
        e = explain_view(_trained(name), _clip(), "videos/val/disc_grow_0003.mp4", label="disc_grow")
        fig = render_explanation(e)
        frames = [ax for ax in fig.axes if ax.get_gid() == FRAME_GID]
        assert len(frames) == 8 * rows
        assert len(fig.axes) == 9 * rows  # plus one top-5 panel per pass
        out = save_explanation(e, tmp_path / f"{name}.png")
        assert out.read_bytes()[:8] == PNG_SIGNATURE and out.stat().st_size > 10_000


def test_explain_a_video_file_and_an_array(tmp_path: Path) -> None:
    from tokshift.viz.explain import explain

    rng = np.random.default_rng(5)
    frames = render_clip("brighten", rng, frames=24, size=64)
    video = tmp_path / "brighten.mp4"
    encode_h264(frames, video)
    trained = _trained("demo_tokshift")
    from_file = explain(trained, video)
    from_array = explain(trained, frames)
    assert from_file.video == str(video) and from_array.video == "array"
    assert from_file.shift_on.attention.shape == from_array.shift_on.attention.shape == (8, 4, 4)
    # The same clip (H.264 is lossy): the two predictions agree.
    assert from_file.shift_on.predicted == from_array.shift_on.predicted
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        explain(trained, tmp_path / "missing.mp4")


def test_explain_command_writes_the_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from tokshift.cli import main

    trained = _trained("demo_tokshift")
    ckpt = tmp_path / "model.pt"
    torch.save({"model": trained.model.state_dict(), "config": trained.config.to_dict(), "classes": CLASSES}, ckpt)
    video = tmp_path / "clip.mp4"
    encode_h264(render_clip("darken", np.random.default_rng(2), frames=24, size=64), video)
    out = tmp_path / "figs" / "clip.png"
    assert main(["explain", str(video), "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    printed = capsys.readouterr().out
    assert "shift off:" in printed and str(out) in printed
    assert main(["explain", str(video), str(video), "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    assert "--out names the figure of a single VIDEO" in capsys.readouterr().err
    assert main(["explain", "--checkpoint", str(ckpt), "--pick-from", str(out)]) == 2
    assert "--shards" in capsys.readouterr().err


def test_explain_of_what_is_no_video_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A text file, an empty file, a folder or a missing path given as VIDEO: bad input (exit 2) in one
    line that names it, no traceback, no figure."""
    import torch

    from tokshift.cli import main

    trained = _trained("demo_vit")
    ckpt = tmp_path / "model.pt"
    torch.save({"model": trained.model.state_dict(), "config": trained.config.to_dict(), "classes": CLASSES}, ckpt)
    (tmp_path / "notes.txt").write_text("not a video\n")
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "clips").mkdir()
    cases = {
        "notes.txt": "is not a video ffmpeg can decode",
        "empty.mp4": "is not a video ffmpeg can decode",
        "clips": "is a folder, not a video file",
        "missing.mp4": "not found; check the path",
    }
    for name, text in cases.items():
        video = str(tmp_path / name)
        assert main(["explain", video, "--checkpoint", str(ckpt), "--out-dir", str(tmp_path / "figs")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("tokshift explain: error: ") and video in err
        assert text in err and "Traceback" not in err
    assert not (tmp_path / "figs").exists()
