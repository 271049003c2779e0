"""The original TokShift's released `.pth` files, tokshift's model.pt and Google's .npz, read by content.

The original's layout comes from tests/original_model.py, an independent re-implementation
from its description; its logits must match tokshift's model loaded from the saved file.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import tokshift
from tests.engine_helpers import run_cli_inprocess
from tokshift.data.labels import kinetics400_classes
from tokshift.fileio import sha256_file
from tokshift.zoo import get_config

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
DEMO = get_config("demo_tokshift")  # embed 96, depth 4, heads 4, patch 16, 64 px, 8 frames


def demo_cfg(arch: str, **changes) -> dict:
    return {**DEMO.model_dict(), "arch": arch, "num_classes": 7, **changes}


def video(seed: int = 1, b: int = 2) -> torch.Tensor:
    import numpy as np
    import torch

    return torch.from_numpy(np.random.default_rng(seed).standard_normal((b, 8, 3, 64, 64)))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# --------------------------------------------------------------------------- build_model(init_from=.pth)


@pytest.mark.parametrize("arch", ["tokshift", "vit"])
def test_original_pth_matches_independent_implementation(tmp_path, arch: str) -> None:
    import torch

    from tests.original_model import original_net, save_original
    from tokshift.engine.loading import build_model

    net = original_net(arch)
    path = save_original(net, tmp_path / "best_ckpt_e18.pth")
    model = build_model(demo_cfg(arch), init_from=path).double().eval()
    x = video()
    with torch.no_grad():
        expect, got = net(x), model(x)
    assert rel_err(got, expect) < 1e-6  # float32 storage of the weights, float64 arithmetic on both sides
    # The head was kept (7 classes on both sides), so the logits are not trivial.
    assert expect.abs().max() > 1e-2
    if arch == "tokshift":  # the shift matters: the same weights without it give other logits
        model_vit = build_model(demo_cfg("vit"), init_from=path).double().eval()
        with torch.no_grad():
            assert rel_err(model_vit(x), expect) > 1e-3


@pytest.mark.parametrize("prefix", ["module.base_model.", "module.", "base_model.", ""])
def test_wrapper_prefixes_are_stripped(tmp_path, prefix: str) -> None:
    import torch

    from tests.original_model import original_net, save_original
    from tokshift.checkpoints import ORIGINAL, open_checkpoint
    from tokshift.engine.loading import build_model

    net = original_net("vit", seed=3)
    path = save_original(net, tmp_path / "c.pth", prefix=prefix)
    ckpt = open_checkpoint(path)
    assert ckpt.kind == ORIGINAL and ckpt.meta["epoch"] == 18
    model = build_model(demo_cfg("vit"), init_from=path)
    attn = net.base_model.transformer.encoder.layer[2].attn
    qkv = torch.cat([attn.query.weight, attn.key.weight, attn.value.weight]).float()
    assert torch.equal(model.blocks[2].attn.qkv.weight, qkv)
    assert torch.equal(model.blocks[2].attn.proj.bias, attn.out.bias.float())


def test_depth_mismatch_names_the_key(tmp_path) -> None:
    from tests.original_model import original_net, save_original
    from tokshift.checkpoints import CheckpointMismatchError
    from tokshift.engine.loading import build_model

    path = save_original(original_net("vit", depth=4), tmp_path / "c.pth")
    with pytest.raises(CheckpointMismatchError) as e:
        build_model(demo_cfg("vit", depth=3), init_from=path)
    assert 'Unexpected key(s) in state_dict: "blocks.3.' in str(e.value) and '"blocks.3.attn.qkv.weight"' in str(
        e.value
    )
    assert "same backbone (depth, width, patch size)" in str(e.value)  # what to do
    with pytest.raises(CheckpointMismatchError) as e:
        build_model(demo_cfg("vit", depth=5), init_from=path)
    assert 'Missing key(s) in state_dict: "blocks.4.norm1.weight"' in str(e.value)
    assert str(path) in str(e.value)


def test_width_mismatch_names_key_and_both_shapes(tmp_path) -> None:
    from tests.original_model import original_net, save_original
    from tokshift.checkpoints import CheckpointMismatchError
    from tokshift.engine.loading import build_model

    path = save_original(original_net("vit", dim=64), tmp_path / "c.pth")
    with pytest.raises(CheckpointMismatchError) as e:
        build_model(demo_cfg("vit"), init_from=path)
    msg = str(e.value)
    shapes = "copying a param with shape torch.Size({}) from checkpoint, the shape in current model is torch.Size({})"
    assert "size mismatch for cls_token: " + shapes.format([1, 1, 64], [1, 1, 96]) in msg
    assert "size mismatch for blocks.0.attn.qkv.weight: " + shapes.format([192, 64], [288, 96]) in msg


class _Payload:
    """An object whose unpickling would write a file: the kind of thing weights_only refuses."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_file_needing_arbitrary_objects_is_refused(tmp_path) -> None:
    from tests.original_model import original_net, save_original
    from tokshift.checkpoints import CheckpointFormatError
    from tokshift.engine.loading import build_model

    marker = tmp_path / "unpickled"
    path = save_original(original_net("vit"), tmp_path / "c.pth", scheduler=_Payload(str(marker)))
    with pytest.raises(CheckpointFormatError) as e:
        build_model(demo_cfg("vit"), init_from=path)
    msg = str(e.value)
    assert str(path) in msg and "unpickling arbitrary objects can run code" in msg
    assert "mkdir" in msg  # names the object it would have had to create
    assert not marker.exists()


def test_head_reinitialised_when_classes_differ(tmp_path, caplog) -> None:
    import torch

    from tests.original_model import original_net, save_original
    from tokshift.engine.loading import build_model

    net = original_net("tokshift", classes=7)
    path = save_original(net, tmp_path / "c.pth")
    with caplog.at_level(logging.INFO, logger="tokshift.engine.loading"):
        model = build_model(demo_cfg("tokshift", num_classes=5), init_from=path)
    assert model.head.weight.shape == (5, 96)
    assert model.head.weight.abs().max() == 0 and model.head.bias.abs().max() == 0
    assert torch.equal(model.norm.weight, net.base_model.transformer.encoder.encoder_norm.weight.float())
    assert any("7-class head" in r.message and "5 classes" in r.message for r in caplog.records)


def test_format_comes_from_content_not_name(tmp_path) -> None:
    import torch

    from tests.original_model import original_net, save_original
    from tests.weights_helpers import DEPTH, HEADS, MLP, PATCH, D, write_google_npz
    from tokshift.checkpoints import NPZ, ORIGINAL, CheckpointFormatError, open_checkpoint
    from tokshift.engine.loading import build_model

    net = original_net("vit")
    as_npz = save_original(net, tmp_path / "really_a.npz")
    model = build_model(demo_cfg("vit"), init_from=as_npz)
    assert torch.equal(model.cls_token, net.base_model.transformer.embeddings.cls_token.float())
    legacy = tmp_path / "legacy.pth"  # torch's pre-zip format: a bare pickle stream
    torch.save(torch.load(as_npz, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    assert open_checkpoint(legacy).kind == ORIGINAL
    assert torch.equal(build_model(demo_cfg("vit"), init_from=legacy).pos_embed, model.pos_embed)
    # A Google .npz named .pth is still read as an .npz (zero head).
    npz = tmp_path / "ViT.npz"
    write_google_npz(npz)
    renamed = tmp_path / "ViT.pth"
    npz.rename(renamed)
    assert open_checkpoint(renamed).kind == NPZ
    cfg = dict(demo_cfg("vit"), embed_dim=D, depth=DEPTH, num_heads=HEADS, mlp_ratio=MLP / D, patch_size=PATCH)
    small = build_model(cfg, init_from=renamed)
    assert small.head.weight.abs().max() == 0 and small.cls_token.abs().max() > 0
    junk = tmp_path / "notes.pth"
    junk.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointFormatError, match="neither a torch checkpoint"):
        build_model(cfg, init_from=junk)


def test_model_pt_as_pretrained_and_position_table_resized(tmp_path) -> None:
    import torch

    from tokshift.checkpoints import resize_pos_embed
    from tokshift.engine.loading import build_model

    src = build_model("demo_vit")
    torch.nn.init.normal_(src.head.weight)
    path = tmp_path / "model.pt"
    torch.save({"model": src.state_dict(), "config": DEMO.to_dict(), "classes": list("abcd")}, path)
    same = build_model("demo_tokshift", init_from=path)
    assert torch.equal(same.head.weight, src.head.weight)  # 4 classes both: head kept
    big = build_model(dict(DEMO.model_dict(), img_size=96), init_from=path)  # 4x4 -> 6x6 patch grid
    assert big.pos_embed.shape == (1, 37, 96)
    assert torch.equal(big.pos_embed, resize_pos_embed(src.pos_embed.detach(), (6, 6)))


# --------------------------------------------------------------------------- position tables

# (old grid, new grid): ViT-B/16's 14x14 at 256 px and 384 px, a non-square grid, a shrink, and
# the demo models' 4x4 at 96 px (6x6) and 48 px (3x3).
RESIZES = [(14, (16, 16)), (14, (24, 24)), (14, (16, 24)), (14, (10, 10)), (4, (6, 6)), (4, (3, 3))]


@pytest.mark.parametrize(("old", "new"), RESIZES)
def test_position_table_resize_is_the_corner_aligned_bilinear_zoom(old: int, new: tuple[int, int]) -> None:
    """timm's resampler, as `resize_pos_embed` calls it, equals the original's zoom written out in
    float64 to float32 rounding; timm's default sampling does not, so the settings matter."""
    import numpy as np
    import torch
    from timm.layers import resample_abs_pos_embed

    from tests.weights_helpers import bilinear_corner_aligned
    from tokshift.checkpoints import resize_pos_embed

    dim = 768 if old == 14 else 96  # ViT-B's width, the demo's width
    rng = np.random.default_rng(old * 1000 + new[0] * 10 + new[1])
    pos = torch.from_numpy((rng.standard_normal((1, 1 + old * old, dim)) * 0.02).astype(np.float32))
    out = resize_pos_embed(pos, new)
    assert out.dtype == torch.float32 and out.shape == (1, 1 + new[0] * new[1], dim)
    assert torch.equal(out[:, 0], pos[:, 0])  # the [CLS] position is kept
    ref = bilinear_corner_aligned(pos[0, 1:].reshape(old, old, dim).double().numpy(), new).reshape(-1, dim)
    scale = np.abs(ref).max()
    assert np.abs(out[0, 1:].double().numpy() - ref).max() < 2e-6 * scale
    default = resample_abs_pos_embed(pos, list(new), num_prefix_tokens=1)  # bicubic, antialiased
    assert np.abs(default[0, 1:].double().numpy() - ref).max() > 1e-2 * scale


def test_position_table_resize_keeps_cls_and_refuses_a_non_square_grid() -> None:
    import torch

    from tokshift.checkpoints import CheckpointMismatchError, resize_pos_embed

    grid = torch.arange(4.0).reshape(1, 4, 1)  # [[0, 1], [2, 3]]
    pos = torch.cat([torch.full((1, 1, 1), 7.0), grid], dim=1)
    out = resize_pos_embed(pos, (3, 3))
    assert out[0, 0, 0] == 7.0
    assert out[0, 1:, 0].reshape(3, 3).tolist() == [[0, 0.5, 1], [1, 1.5, 2], [2, 2.5, 3]]
    assert resize_pos_embed(pos, (2, 2)) is pos  # same grid: untouched
    with pytest.raises(CheckpointMismatchError, match="5 patches is not a square grid"):
        resize_pos_embed(torch.zeros(1, 6, 3), (3, 3))


# --------------------------------------------------------------------------- evaluate / predict / import


def test_load_trained_model_reads_original_pth(tmp_path) -> None:
    import torch

    from tests.original_model import original_net, save_original
    from tokshift.checkpoints import ORIGINAL, CheckpointMismatchError
    from tokshift.engine.loading import load_trained_model

    net = original_net("tokshift", classes=400)
    path = save_original(net, tmp_path / "k400.pth")
    with pytest.raises(ValueError, match="pass the zoo name it was trained as"):
        load_trained_model(path, torch.device("cpu"))
    trained = load_trained_model(path, torch.device("cpu"), model_name="demo_tokshift")
    assert trained.classes == kinetics400_classes() and trained.config.num_classes == 400
    assert trained.checkpoint["format"] == ORIGINAL and not trained.model.training
    x = video(b=1)
    with torch.no_grad():
        assert rel_err(trained.model.double()(x), net(x)) < 1e-6
    # A wrong zoo name fails on the first key that does not fit, not with a silent resize.
    with pytest.raises(CheckpointMismatchError) as e:
        load_trained_model(path, torch.device("cpu"), model_name="k400_tokshift_div4_8x32_base_224")
    assert "size mismatch for pos_embed: copying a param with shape torch.Size([1, 17, 96])" in str(e.value)
    assert "Pass the zoo name the checkpoint was trained as" in str(e.value)
    five = save_original(original_net("vit", classes=5), tmp_path / "five.pth")
    with pytest.raises(ValueError, match="5-class head and records no class names"):
        load_trained_model(five, torch.device("cpu"), model_name="demo_vit")
    named = load_trained_model(five, torch.device("cpu"), model_name="demo_vit", classes=list("vwxyz"))
    assert named.classes == list("vwxyz")


def test_import_original_writes_a_model_pt(tmp_path) -> None:
    import torch

    from tests.original_model import original_net, save_original
    from tokshift.checkpoints import CheckpointFormatError
    from tokshift.engine.loading import import_original, load_trained_model

    net = original_net("tokshift", classes=3)
    src = save_original(net, tmp_path / "ckpt_e18.pth")
    out = tmp_path / "imported" / "model.pt"
    done = import_original(src, "demo_tokshift", out, classes=["x", "y", "z"])
    assert done.sha256 == sha256_file(out) and done.source_sha256 == sha256_file(src)
    state = torch.load(out, weights_only=True)
    assert state["source"] == str(src.resolve()) and state["source_sha256"] == sha256_file(src)
    assert state["epoch"] == 18 and state["metrics"]["best_acc1"] == pytest.approx(77.3)
    assert state["classes"] == ["x", "y", "z"] and state["config"]["num_classes"] == 3
    trained = load_trained_model(out, torch.device("cpu"))
    x = video(b=1)
    with torch.no_grad():
        assert rel_err(trained.model.double()(x), net(x)) < 1e-6
    with pytest.raises(CheckpointFormatError, match="not a checkpoint of the original TokShift"):
        import_original(out, "demo_tokshift", tmp_path / "again.pt")


def test_notebook_api_matches_predict_command(tmp_path) -> None:
    import numpy as np
    import torch

    from tests.data_helpers import encode
    from tokshift.engine.loading import build_model
    from tokshift.engine.predict import PredictOptions, predict_videos

    torch.manual_seed(0)
    model = build_model("demo_tokshift")
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    path = tmp_path / "model.pt"
    torch.save(
        {"model": model.state_dict(), "config": DEMO.to_dict(), "classes": ["up", "down", "left", "right"]}, path
    )
    m = tokshift.load(path, device="cpu")
    assert m.classes == ["up", "down", "left", "right"] and not m.model.training
    frames = np.random.default_rng(0).integers(0, 256, (20, 48, 64, 3), dtype=np.uint8)
    top = tokshift.predict(m, frames)
    assert sorted(label for label, _ in top) == sorted(m.classes)  # top=5 of 4 classes: all of them
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs) and sum(probs) <= 1 + 1e-6
    assert len(tokshift.predict(m, frames, top=2)) == 2
    # A file goes through the same decode and views as `tokshift predict`.
    mp4 = encode(frames, tmp_path / "clip.mp4")
    out = StringIO()
    assert predict_videos(PredictOptions([str(mp4)], path, format="json", device="cpu", amp="off"), out=out) == 0
    expect = json.loads(out.getvalue())["predictions"][0]["top"]
    got = tokshift.predict(m, mp4)
    assert [label for label, _ in got] == [t["label"] for t in expect]
    np.testing.assert_allclose([p for _, p in got], [t["score"] for t in expect], rtol=1e-5)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\) uint8"):
        tokshift.predict(m, frames.astype(np.float32))


def test_notebook_and_predict_command_agree_on_the_bicubic_resize(tmp_path) -> None:
    import numpy as np
    import torch

    from tests.data_helpers import encode
    from tokshift.data.decode import decode_video
    from tokshift.engine.loading import build_model
    from tokshift.engine.predict import PredictOptions, predict_videos

    torch.manual_seed(1)
    model = build_model("demo_tokshift")
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    path = tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "config": DEMO.to_dict(), "classes": list("abcd")}, path)
    m = tokshift.load(path, device="cpu")
    mp4 = encode(np.random.default_rng(1).integers(0, 256, (20, 96, 128, 3), dtype=np.uint8), tmp_path / "clip.mp4")
    out = StringIO()
    opts = PredictOptions([str(mp4)], path, format="json", device="cpu", amp="off", resize="bicubic")
    assert predict_videos(opts, out=out) == 0
    report = json.loads(out.getvalue())
    assert report["resize"] == "bicubic"
    expect = {t["label"]: t["score"] for t in report["predictions"][0]["top"]}
    # The file is decoded at full size and resized like an array of its frames.
    native, _fps = decode_video(mp4)
    for video in (mp4, native):
        got = dict(tokshift.predict(m, video, resize="bicubic"))
        assert got.keys() == expect.keys()
        np.testing.assert_allclose([got[k] for k in expect], list(expect.values()), rtol=1e-5)
    linear = dict(tokshift.predict(m, native))
    assert max(abs(linear[k] - expect[k]) for k in expect) > 1e-4  # the resize reaches the model
    with pytest.raises(ValueError, match="'lanczos'.*linear, bicubic"):
        tokshift.predict(m, native, resize="lanczos")


def test_notebook_load_of_npz_needs_a_model_name(tmp_path) -> None:
    import torch

    from tests.weights_helpers import write_google_npz
    from tokshift.engine.loading import load_trained_model

    npz = tmp_path / "ViT.npz"
    write_google_npz(npz)
    with pytest.raises(ValueError, match="pass model=<zoo name>"):
        tokshift.load(npz)
    with pytest.raises(ValueError, match="without a trained classifier"):
        load_trained_model(npz, torch.device("cpu"))


def test_kinetics400_labels_are_the_sorted_400() -> None:
    names = kinetics400_classes()
    assert len(names) == len(set(names)) == 400 and names == sorted(names)
    assert names[0] == "abseiling" and names[-1] == "zumba"
    assert {"passing American football (in game)", "massaging person's head", "dying hair"} <= set(names)


def test_import_tokshift_stays_torch_free() -> None:
    code = "import sys, tokshift; print(sorted({'torch', 'timm', 'numpy'} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
    assert {"load", "predict", "import_original"} <= set(dir(tokshift))


def test_cli_import_original_and_predict_on_the_pth_directly(tmp_path) -> None:
    """`tokshift import-original` writes a model.pt; `predict` on the .pth itself gives the same answer."""
    import numpy as np

    from tests.data_helpers import encode
    from tests.original_model import original_net, save_original

    net = original_net("tokshift", classes=3)
    src = save_original(net, tmp_path / "best_ckpt_e18.pth")
    classes = tmp_path / "classes.txt"
    classes.write_text("x\ny\nz\n")
    mp4 = encode(np.random.default_rng(0).integers(0, 256, (20, 48, 64, 3), dtype=np.uint8), tmp_path / "c.mp4")
    out = tmp_path / "model.pt"

    done = run_cli_inprocess(
        "import-original", str(src), "--model", "demo_tokshift", "--out", str(out), "--classes", str(classes)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert str(out) in done.stdout and sha256_file(src) in done.stdout
    common = ["--format", "json", "--device", "cpu", "--amp", "off", "--clips", "2", "--crops", "1"]
    via_pt = run_cli_inprocess("predict", str(mp4), "--checkpoint", str(out), *common)
    via_pth = run_cli_inprocess(
        "predict", str(mp4), "--checkpoint", str(src), "--model", "demo_tokshift", "--classes", str(classes), *common
    )
    assert via_pt.returncode == 0 and via_pth.returncode == 0, via_pt.stderr[-1500:] + via_pth.stderr[-1500:]
    top_pt = json.loads(via_pt.stdout)["predictions"][0]["top"]
    top_pth = json.loads(via_pth.stdout)["predictions"][0]["top"]
    assert [t["label"] for t in top_pt] == [t["label"] for t in top_pth]
    np.testing.assert_allclose([t["score"] for t in top_pt], [t["score"] for t in top_pth], rtol=1e-5)
    # Without the zoo name the .pth cannot be rebuilt: the error says what to pass.
    no_name = run_cli_inprocess("predict", str(mp4), "--checkpoint", str(src), "--classes", str(classes), *common)
    assert no_name.returncode != 0 and "zoo" in no_name.stderr.lower()
