"""A small random checkpoint in the layout of Google's ImageNet-21k ViT `.npz` files, and the
resize of a position table to another patch grid written out by hand, to check the loader's."""

from __future__ import annotations

import math

import numpy as np

D, HEADS, DEPTH, PATCH, MLP = 32, 4, 2, 8, 64


def write_google_npz(path, grid: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """A small random checkpoint in the ImageNet-21k ViT `.npz` key layout."""
    rng = np.random.default_rng(seed)
    r = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)  # noqa: E731
    hd = D // HEADS
    w = {
        "embedding/kernel": r(PATCH, PATCH, 3, D),
        "embedding/bias": r(D),
        "cls": r(1, 1, D),
        "Transformer/posembed_input/pos_embedding": r(1, 1 + grid * grid, D),
        "Transformer/encoder_norm/scale": 1 + r(D),
        "Transformer/encoder_norm/bias": r(D),
        "pre_logits/kernel": r(D, D),
        "pre_logits/bias": r(D),
        "head/kernel": r(D, 21),
        "head/bias": r(21),
    }
    for i in range(DEPTH):
        p = f"Transformer/encoderblock_{i}/"
        a = p + "MultiHeadDotProductAttention_1/"
        w.update(
            {
                p + "LayerNorm_0/scale": 1 + r(D),
                p + "LayerNorm_0/bias": r(D),
                p + "LayerNorm_2/scale": 1 + r(D),
                p + "LayerNorm_2/bias": r(D),
                a + "query/kernel": r(D, HEADS, hd),
                a + "query/bias": r(HEADS, hd),
                a + "key/kernel": r(D, HEADS, hd),
                a + "key/bias": r(HEADS, hd),
                a + "value/kernel": r(D, HEADS, hd),
                a + "value/bias": r(HEADS, hd),
                a + "out/kernel": r(HEADS, hd, D),
                a + "out/bias": r(D),
                p + "MlpBlock_3/Dense_0/kernel": r(D, MLP),
                p + "MlpBlock_3/Dense_0/bias": r(MLP),
                p + "MlpBlock_3/Dense_1/kernel": r(MLP, D),
                p + "MlpBlock_3/Dense_1/bias": r(D),
            }
        )
    np.savez(path, **w)
    return w


def bilinear_corner_aligned(grid: np.ndarray, out: int | tuple[int, int]) -> np.ndarray:
    """Independent corner-aligned bilinear resize of a (g, g, D) grid, written out by hand."""
    g = grid.shape[0]
    oh, ow = (out, out) if isinstance(out, int) else out
    res = np.zeros((oh, ow, grid.shape[2]))
    for i in range(oh):
        for j in range(ow):
            y = i * (g - 1) / (oh - 1)
            x = j * (g - 1) / (ow - 1)
            y0, x0 = min(int(math.floor(y)), g - 2), min(int(math.floor(x)), g - 2)
            dy, dx = y - y0, x - x0
            res[i, j] = (
                (1 - dy) * (1 - dx) * grid[y0, x0]
                + (1 - dy) * dx * grid[y0, x0 + 1]
                + dy * (1 - dx) * grid[y0 + 1, x0]
                + dy * dx * grid[y0 + 1, x0 + 1]
            )
    return res
