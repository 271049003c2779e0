"""TokShift semantics, cross-frame information flow, and Google .npz loading."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.weights_helpers import DEPTH, HEADS, MLP, PATCH, D, bilinear_corner_aligned, write_google_npz

if TYPE_CHECKING:
    import torch


def naive_shift(x: np.ndarray, T: int, div: int) -> np.ndarray:
    """Deliberately naive transcription of docs/reference.md ("TokShift"): loops over frames and channels."""
    BT, N, D = x.shape
    out = x.copy()
    fold = D // div
    for b in range(BT // T):
        for t in range(T):
            for c in range(D):
                if c < fold:
                    out[b * T + t, 0, c] = x[b * T + t + 1, 0, c] if t + 1 < T else 0.0
                elif c < 2 * fold:
                    out[b * T + t, 0, c] = x[b * T + t - 1, 0, c] if t - 1 >= 0 else 0.0
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("in_place", [True, False])
@pytest.mark.parametrize("T,D,div", [(1, 8, 4), (2, 8, 4), (3, 10, 4), (4, 7, 2), (8, 12, 3), (5, 16, 8), (4, 3, 4)])
def test_token_shift_matches_naive_reference(T: int, D: int, div: int, in_place: bool, dtype: str) -> None:
    """Both shifts, in place (`token_shift_`) and into a new tensor (`token_shift`), bit for bit."""
    import torch

    from tokshift.models import token_shift, token_shift_

    rng = np.random.default_rng(T * 100 + D)
    x = rng.standard_normal((2 * T, 5, D)).astype(dtype)
    got = (token_shift_ if in_place else token_shift)(torch.from_numpy(x.copy()), T, div).numpy()
    np.testing.assert_array_equal(got, naive_shift(x, T, div))


def test_token_shift_gradient() -> None:
    """The out-of-place shift's backward is the exact adjoint (a shift the other way)."""
    import torch

    from tokshift.models import token_shift

    x = torch.randn(6, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: token_shift(v, 3, 4), (x,))


def test_token_shift_is_in_place_on_cls_only() -> None:
    import torch

    from tokshift.models import token_shift_

    x = torch.randn(8, 17, 64)
    before = x.clone()
    out = token_shift_(x, 4, 4)
    assert out.data_ptr() == x.data_ptr()
    torch.testing.assert_close(out[:, 1:], before[:, 1:], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 0, 32:], before[:, 0, 32:], rtol=0, atol=0)
    assert not torch.equal(out[:, 0, :32], before[:, 0, :32])


def _block_jacobian_blocks(arch: str, T: int, N: int = 2, D: int = 8) -> torch.Tensor:
    """|d out[t', n'] / d in[t, n]| summed over channels: a (T, N, T, N) dependency map.

    One [CLS] and one patch token per frame, 8 channels (2 heads, shift fold 2) are enough
    for the structural claims below; the Jacobian has (T * N * D)^2 entries.
    """
    import torch

    from tokshift.models import TokShiftBlock

    torch.manual_seed(0)
    if arch == "tokshift":
        blk = TokShiftBlock(dim=D, num_heads=2, qkv_bias=True, num_frames=T, shift_div=4)
    else:
        from timm.models.vision_transformer import Block

        blk = Block(dim=D, num_heads=2, qkv_bias=True)
    blk = blk.double()
    x0 = torch.randn(T, N, D, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda x: blk(x.clone()), x0)  # (T,N,D,T,N,D)
    return jac.abs().sum(dim=(2, 5))


def test_vit_block_never_mixes_frames() -> None:
    dep = _block_jacobian_blocks("vit", T=2)  # frames are independent samples: two show it
    T = dep.shape[0]
    for t in range(T):
        for s in range(T):
            if s != t:
                assert dep[t, :, s, :].max() == 0


def test_tokshift_block_information_flow() -> None:
    dep = _block_jacobian_blocks("tokshift", T=4)  # frames 0 and 3 are three apart
    T = dep.shape[0]
    for t in range(T):
        for s in range(T):
            # [CLS] output of frame t depends on the neighbouring frames' [CLS]; the two
            # shifts of one block reach at most two frames away.
            if abs(s - t) == 1:
                assert dep[t, 0, s, 0] > 0
            elif abs(s - t) > 2:
                assert dep[t, :, s, :].max() == 0
            # Patch tokens never flow to other frames' patch tokens.
            if s != t:
                assert dep[t, 1:, s, 1:].max() == 0


def test_vit_and_tokshift_differ_only_by_shift() -> None:
    import torch

    from tokshift.models import VideoVisionTransformer

    cfg = dict(
        arch="vit",
        embed_dim=32,
        depth=2,
        num_heads=4,
        mlp_ratio=4.0,
        patch_size=8,
        img_size=32,
        num_frames=3,
        shift_div=4,
        num_classes=5,
    )
    torch.manual_seed(0)
    vit = VideoVisionTransformer.from_config(cfg)
    tok = VideoVisionTransformer.from_config({**cfg, "arch": "tokshift"})
    tok.load_state_dict(vit.state_dict())
    single = torch.randn(2, 1, 3, 32, 32)
    video = single.expand(2, 3, 3, 32, 32).clone()
    vit.eval(), tok.eval()
    with torch.no_grad():
        # Identical frames: the ViT gives the per-frame logits; TokShift does not (borders are zeroed).
        torch.testing.assert_close(vit(video), vit.forward_head(vit.forward_features(single[:, 0])))
        assert not torch.allclose(tok(video), vit(video))
    assert vit(video).shape == (2, 5)


def test_model_rejects_wrong_frame_count() -> None:
    import torch

    from tokshift.models import VideoVisionTransformer

    m = VideoVisionTransformer.from_config(
        dict(
            arch="tokshift",
            embed_dim=32,
            depth=1,
            num_heads=4,
            mlp_ratio=4.0,
            patch_size=8,
            img_size=32,
            num_frames=4,
            shift_div=4,
            num_classes=3,
        )
    )
    with pytest.raises(ValueError, match="4 frames"):
        m(torch.randn(1, 3, 3, 32, 32))


def test_from_config_names_missing_keys() -> None:
    from tokshift.models import VideoVisionTransformer

    with pytest.raises(ValueError, match="shift_div"):
        VideoVisionTransformer.from_config(
            dict(
                arch="vit",
                embed_dim=32,
                depth=1,
                num_heads=4,
                mlp_ratio=4.0,
                patch_size=8,
                img_size=32,
                num_frames=4,
                num_classes=3,
            )
        )


def test_backward_through_the_shifts() -> None:
    import torch

    from tokshift.models import VideoVisionTransformer

    m = VideoVisionTransformer.from_config("demo_tokshift")
    x = torch.randn(2, 8, 3, 64, 64)
    m(x).sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def _small_model(arch: str = "tokshift"):
    import torch

    from tokshift.models import VideoVisionTransformer

    torch.manual_seed(0)
    m = VideoVisionTransformer.from_config(
        dict(
            arch=arch,
            embed_dim=32,
            depth=2,
            num_heads=4,
            mlp_ratio=2.0,
            patch_size=8,
            img_size=32,
            num_frames=4,
            shift_div=4,
            num_classes=7,
        )
    )
    with torch.no_grad():
        m.head.weight.normal_()  # logits of order 1-10, where bf16 keeps ~2-3 significant digits
        m.head.bias.normal_()
    return m.eval()


def test_head_and_frame_mean_run_in_float32_under_bf16_autocast() -> None:
    import torch
    import torch.nn.functional as F

    m = _small_model()
    video = torch.randn(2, 4, 3, 32, 32)
    kept: dict[str, torch.Tensor] = {}
    m.blocks[-1].mlp.register_forward_hook(lambda _m, _i, out: kept.setdefault("mlp", out))
    m.norm.register_forward_hook(lambda _m, _i, out: kept.setdefault("features", out))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = m(video)
    assert kept["mlp"].dtype == torch.bfloat16  # the blocks' matmuls did run in bf16
    # The residual stream and the final norm stay float32 under autocast; so must the head.
    feats = kept["features"][:, 0]
    assert feats.dtype == torch.float32 and logits.dtype == torch.float32

    def head(dtype: torch.dtype) -> torch.Tensor:
        frame_logits = F.linear(feats.to(dtype), m.head.weight.to(dtype), m.head.bias.to(dtype))
        return frame_logits.float().view(2, 4, -1).mean(1)

    with torch.no_grad():
        fp32, bf16 = head(torch.float32), head(torch.bfloat16)
    torch.testing.assert_close(logits, fp32, rtol=1e-6, atol=1e-6)
    assert (logits - bf16).abs().max() > 1e-3  # what a bf16 head would have given instead


@pytest.mark.parametrize("checkpointing", [False, True])
def test_forward_compiles_to_one_graph(checkpointing: bool) -> None:
    """`train --compile` must not split the model's forward (graph breaks cost speed on GPU).

    The eager backend checks the capture alone, without code generation, so it takes seconds.
    """
    import torch

    m = _small_model().train()
    m.set_grad_checkpointing(checkpointing)
    video = torch.randn(2, 4, 3, 32, 32)
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = compiled(video)
        ref = m(video)
    out.sum().backward()
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)


# --------------------------------------------------------------------------- Google .npz


def reference_features(w: dict[str, np.ndarray], video: np.ndarray, arch: str, grid: int) -> np.ndarray:
    """Final-normed [CLS] features per frame, straight from the .npz arrays, float64."""
    f = {k: v.astype(np.float64) for k, v in w.items()}
    B, T, C, H, W = video.shape
    frames = video.reshape(B * T, C, H, W).astype(np.float64)
    g = H // PATCH
    patches = frames.reshape(B * T, C, g, PATCH, g, PATCH).transpose(0, 2, 4, 3, 5, 1)  # n,gy,gx,py,px,c
    tokens = np.einsum("nyxpqc,pqcd->nyxd", patches, f["embedding/kernel"]).reshape(B * T, g * g, D)
    tokens = tokens + f["embedding/bias"]
    x = np.concatenate([np.broadcast_to(f["cls"], (B * T, 1, D)), tokens], axis=1)
    pos = f["Transformer/posembed_input/pos_embedding"]
    if g != grid:
        pos = np.concatenate(
            [pos[:, :1], bilinear_corner_aligned(pos[0, 1:].reshape(grid, grid, D), g).reshape(1, g * g, D)], 1
        )
    x = x + pos

    def ln(v, s, b):
        mu = v.mean(-1, keepdims=True)
        var = ((v - mu) ** 2).mean(-1, keepdims=True)
        return (v - mu) / np.sqrt(var + 1e-6) * s + b

    def gelu(v):
        return 0.5 * v * (1 + np.vectorize(math.erf)(v / math.sqrt(2)))

    def shift(v):
        return naive_shift(v, T, 4) if arch == "tokshift" else v

    hd = D // HEADS
    for i in range(DEPTH):
        p = f"Transformer/encoderblock_{i}/"
        a = p + "MultiHeadDotProductAttention_1/"
        x = shift(x)
        h = ln(x, f[p + "LayerNorm_0/scale"], f[p + "LayerNorm_0/bias"])
        q = np.einsum("nld,dhk->nhlk", h, f[a + "query/kernel"]) + f[a + "query/bias"][None, :, None]
        k = np.einsum("nld,dhk->nhlk", h, f[a + "key/kernel"]) + f[a + "key/bias"][None, :, None]
        v = np.einsum("nld,dhk->nhlk", h, f[a + "value/kernel"]) + f[a + "value/bias"][None, :, None]
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        o = np.einsum("nhlk,hkd->nld", s @ v, f[a + "out/kernel"]) + f[a + "out/bias"]
        x = x + o
        x = shift(x)
        h = ln(x, f[p + "LayerNorm_2/scale"], f[p + "LayerNorm_2/bias"])
        h = gelu(h @ f[p + "MlpBlock_3/Dense_0/kernel"] + f[p + "MlpBlock_3/Dense_0/bias"])
        x = x + h @ f[p + "MlpBlock_3/Dense_1/kernel"] + f[p + "MlpBlock_3/Dense_1/bias"]
    x = ln(x, f["Transformer/encoder_norm/scale"], f["Transformer/encoder_norm/bias"])
    return x[:, 0]


@pytest.mark.parametrize("arch", ["tokshift", "vit"])
@pytest.mark.parametrize("img_size", [32, 48])
def test_npz_loading_matches_direct_forward(tmp_path, arch: str, img_size: int) -> None:
    import torch

    from tokshift.engine.loading import build_model

    path = tmp_path / "ViT-tiny.npz"
    w = write_google_npz(path, grid=4)
    T, classes = 3, 6
    cfg = dict(
        arch=arch,
        embed_dim=D,
        depth=DEPTH,
        num_heads=HEADS,
        mlp_ratio=MLP / D,
        patch_size=PATCH,
        img_size=img_size,
        num_frames=T,
        shift_div=4,
        num_classes=classes,
    )
    model = build_model(cfg, init_from=path).double().eval()
    assert model.head.weight.abs().max() == 0 and model.head.bias.abs().max() == 0
    video = np.random.default_rng(1).standard_normal((2, T, 3, img_size, img_size))
    with torch.no_grad():
        feats = model.forward_features(torch.from_numpy(video).flatten(0, 1))[:, 0].numpy()
    ref = reference_features(w, video, arch, grid=4)
    assert np.abs(feats - ref).max() / np.abs(ref).max() < 1e-6
    # The video logit is the mean over frames of the per-frame head output.
    head_w = np.random.default_rng(2).standard_normal((classes, D))
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(head_w))
        logits = model(torch.from_numpy(video)).numpy()
    expect = (ref @ head_w.T).reshape(2, T, classes).mean(1)
    assert np.abs(logits - expect).max() / np.abs(expect).max() < 1e-6


def test_npz_shape_mismatch_names_key_and_shapes(tmp_path) -> None:
    from tokshift.checkpoints import CheckpointMismatchError
    from tokshift.engine.loading import build_model

    path = tmp_path / "w.npz"
    write_google_npz(path)
    cfg = dict(
        arch="vit",
        embed_dim=D,
        depth=DEPTH,
        num_heads=HEADS,
        mlp_ratio=2.0,  # MLP 64 vs 64? no: 2*32=64
        patch_size=PATCH,
        img_size=32,
        num_frames=2,
        shift_div=4,
        num_classes=3,
    )
    cfg["mlp_ratio"] = 3.0  # model MLP width 96, checkpoint 64
    with pytest.raises(CheckpointMismatchError) as e:
        build_model(cfg, init_from=path)
    msg = str(e.value)
    assert "size mismatch for blocks.0.mlp.fc1.weight" in msg and str(path) in msg
    assert "torch.Size([64, 32]) from checkpoint" in msg and "current model is torch.Size([96, 32])" in msg


def test_npz_missing_key_is_named(tmp_path) -> None:
    from tokshift.checkpoints import CheckpointMismatchError
    from tokshift.engine.loading import build_model

    path = tmp_path / "w.npz"
    w = write_google_npz(path)
    del w["Transformer/encoderblock_1/LayerNorm_2/bias"]
    np.savez(path, **w)
    cfg = dict(
        arch="vit",
        embed_dim=D,
        depth=DEPTH,
        num_heads=HEADS,
        mlp_ratio=MLP / D,
        patch_size=PATCH,
        img_size=32,
        num_frames=2,
        shift_div=4,
        num_classes=3,
    )
    with pytest.raises(CheckpointMismatchError, match="encoderblock_1/LayerNorm_2/bias"):
        build_model(cfg, init_from=path)


def test_trained_checkpoint_mismatch_names_key_and_shapes(tmp_path) -> None:
    """`tokshift evaluate`/`predict` load model.pt through the same checked loader as the .npz weights."""
    import torch

    from tokshift.checkpoints import CheckpointMismatchError
    from tokshift.engine.loading import build_model, load_trained_model
    from tokshift.zoo import get_config

    cfg = get_config("demo_tokshift")
    model = build_model(cfg)
    classes = [f"c{i}" for i in range(cfg.num_classes)]
    good = tmp_path / "good.pt"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "classes": classes}, good)
    loaded = load_trained_model(good, torch.device("cpu"))
    assert torch.equal(loaded.model.pos_embed, model.pos_embed) and loaded.classes == classes

    state = model.state_dict()
    state["head.weight"] = torch.zeros(cfg.num_classes + 1, cfg.embed_dim)
    state["extra.bias"] = torch.zeros(2)
    bad = tmp_path / "bad.pt"
    torch.save({"model": state, "config": cfg.to_dict(), "classes": classes}, bad)
    with pytest.raises(CheckpointMismatchError) as e:
        load_trained_model(bad, torch.device("cpu"))
    msg = str(e.value)
    assert str(bad) in msg and "size mismatch for head.weight" in msg
    assert "torch.Size([5, 96]) from checkpoint" in msg and "current model is torch.Size([4, 96])" in msg
    assert 'Unexpected key(s) in state_dict: "extra.bias"' in msg and "re-copy the file" in msg
