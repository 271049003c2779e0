"""Activation checkpointing (`set_grad_checkpointing`) on TokShift and the plain ViT.

Checkpointing re-runs each block from its saved input in the backward pass, so a block
must never modify its input in place; the gradients must be those of the plain run.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tokshift.models import TokShiftBlock, VideoVisionTransformer, token_shift

CFG = dict(
    embed_dim=16,
    depth=3,
    num_heads=2,
    mlp_ratio=2.0,
    patch_size=8,
    img_size=16,
    num_frames=4,
    shift_div=4,
    num_classes=5,
)


def _loss_and_grads(model: VideoVisionTransformer, video: torch.Tensor, labels: torch.Tensor, checkpointing: bool):
    """Loss, parameter gradients and how many block forwards ran, for one forward + backward."""
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(checkpointing)
    calls = [0]
    # A pre-hook: a recomputation stops as soon as it has rebuilt what the backward needs.
    hooks = [b.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)) for b in model.blocks]
    try:
        loss = F.cross_entropy(model(video), labels)
        loss.backward()
    finally:
        for h in hooks:
            h.remove()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, calls[0]


@pytest.mark.parametrize("arch", ["tokshift", "vit"])
def test_checkpointing_gives_the_same_loss_and_gradients(arch: str) -> None:
    torch.manual_seed(0)
    model = VideoVisionTransformer.from_config({**CFG, "arch": arch}).double().train()
    with torch.no_grad():
        model.head.weight.normal_()  # a non-trivial head, so every gradient is non-zero
    video = torch.randn(2, CFG["num_frames"], 3, 16, 16, dtype=torch.float64)
    labels = torch.tensor([1, 3])

    loss, grads, calls = _loss_and_grads(model, video, labels, checkpointing=False)
    loss_ck, grads_ck, calls_ck = _loss_and_grads(model, video, labels, checkpointing=True)

    # The checkpointed path really ran: every block was recomputed in the backward pass.
    assert (calls, calls_ck) == (CFG["depth"], 2 * CFG["depth"])
    assert torch.equal(loss, loss_ck)
    assert grads.keys() == grads_ck.keys()
    for name, g in grads.items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(grads_ck[name], g, rtol=1e-12, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def test_shift_and_block_leave_their_input_unchanged() -> None:
    x = torch.randn(8, 5, 16)
    before = x.clone()
    out = token_shift(x, 4, 4)
    assert x._version == 0 and torch.equal(x, before)
    assert not torch.equal(out[:, 0, :8], x[:, 0, :8])  # it did shift, into the new tensor

    blk = TokShiftBlock(dim=16, num_heads=2, qkv_bias=True, num_frames=4, shift_div=4)
    blk(x)
    assert x._version == 0 and torch.equal(x, before)
