"""The original TokShift's network re-implemented from its description, and saved as it saves it.

Written from docs/reference.md ("Released checkpoints of the original"), not from tokshift's
code: plain torch modules with ViT-pytorch names, separate query/key/value/out layers, the
[CLS] shift written as a loop over frames, wrapped like DDP. Tests load the saved files with
tokshift and compare logits.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


def cls_shift(x: torch.Tensor, frames: int, shift_div: int) -> torch.Tensor:
    """[CLS] channels [0, fold) from frame t+1, [fold, 2 fold) from frame t-1, zeros past the ends."""
    bt, n, d = x.shape
    fold = d // shift_div
    v = x.view(bt // frames, frames, n, d)
    out = v.clone()
    for t in range(frames):
        out[:, t, 0, :fold] = v[:, t + 1, 0, :fold] if t + 1 < frames else 0.0
        out[:, t, 0, fold : 2 * fold] = v[:, t - 1, 0, fold : 2 * fold] if t > 0 else 0.0
    return out.view(bt, n, d)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).permute(0, 2, 1, 3)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        return self.out((w @ v).permute(0, 2, 1, 3).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, frames: int, shift_div: int | None) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = Mlp(dim, hidden)
        self.frames, self.shift_div = frames, shift_div

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shift_div:
            x = cls_shift(x, self.frames, self.shift_div)
        x = x + self.attn(self.attention_norm(x))
        if self.shift_div:
            x = cls_shift(x, self.frames, self.shift_div)
        return x + self.ffn(self.ffn_norm(x))


class Embeddings(nn.Module):
    def __init__(self, dim: int, patch: int, grid: int) -> None:
        super().__init__()
        self.patch_embeddings = nn.Conv2d(3, dim, patch, patch)
        self.position_embeddings = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_embeddings(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(len(x), -1, -1), p], dim=1) + self.position_embeddings


class Encoder(nn.Module):
    def __init__(self, layers: list[Block], dim: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.layer:
            x = blk(x)
        return self.encoder_norm(x)


class Transformer(nn.Module):
    def __init__(self, embeddings: Embeddings, encoder: Encoder) -> None:
        super().__init__()
        self.embeddings, self.encoder = embeddings, encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embeddings(x))


class ViT(nn.Module):
    def __init__(self, arch: str, dim: int, depth: int, heads: int, patch: int, img: int, classes: int, frames: int):
        super().__init__()
        div = 4 if arch == "tokshift" else None
        blocks = [Block(dim, heads, 4 * dim, frames, div) for _ in range(depth)]
        self.transformer = Transformer(Embeddings(dim, patch, img // patch), Encoder(blocks, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.transformer(frames)[:, 0])


class VideoNet(nn.Module):
    """The original's video wrapper: a ViT per frame, logits averaged over frames."""

    def __init__(self, **kw) -> None:
        super().__init__()
        self.base_model = ViT(**kw)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, t = video.shape[:2]
        return self.base_model(video.flatten(0, 1)).view(b, t, -1).mean(1)


def original_net(arch: str = "tokshift", dim: int = 96, depth: int = 4, classes: int = 7, seed: int = 0) -> VideoNet:
    """A random original-layout network with the demo model's shape."""
    torch.manual_seed(seed)
    net = VideoNet(arch=arch, dim=dim, depth=depth, heads=4, patch=16, img=64, classes=classes, frames=8)
    with torch.no_grad():
        for name, p in net.named_parameters():
            is_norm_scale = "norm" in name and name.endswith("weight")
            p.copy_(1 + 0.1 * torch.randn_like(p) if is_norm_scale else 0.2 * torch.randn_like(p))
    return net.double().eval()


def save_original(net: VideoNet, path: Path, prefix: str = "module.base_model.", **extra) -> Path:
    """`torch.save` as the original's rank 0 does: keys under DDP's and the video wrapper's prefixes."""
    state = {prefix + k: v.float() for k, v in net.base_model.state_dict().items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[10, 15])
    ckpt = {
        "epoch": 18,
        "state_dict": state,
        "best_acc1": torch.tensor(77.3),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        **extra,
    }
    torch.save(ckpt, path)
    return path
