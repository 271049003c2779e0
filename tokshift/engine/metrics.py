"""Score fusion over views and the accuracy measures reported in metrics.json."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def fuse_logits(view_logits: torch.Tensor) -> torch.Tensor:
    """(V, C) per-view logits -> (C,) mean logit (the original fusion)."""
    return view_logits.float().mean(dim=0)


def fuse_softmax(view_logits: torch.Tensor) -> torch.Tensor:
    """(V, C) per-view logits -> (C,) mean class probability."""
    return view_logits.float().softmax(dim=-1).mean(dim=0)


def topk(scores: torch.Tensor, k: int = 5) -> tuple[list[int], list[float]]:
    """Indices and values of the k highest scores (ties broken by lower index)."""
    k = min(k, scores.numel())
    # A stable descending sort makes the order independent of the device and thread count.
    order = torch.sort(scores.float().cpu(), descending=True, stable=True)
    return order.indices[:k].tolist(), order.values[:k].tolist()


def percent(hits: Sequence[bool] | np.ndarray) -> float:
    """Share of True in percent (0 for an empty sequence)."""
    arr = np.asarray(hits, dtype=bool)
    return float(100.0 * arr.mean()) if arr.size else 0.0


def mean_class_accuracy(labels: Sequence[int], preds: Sequence[int]) -> float:
    """Mean over the classes present in `labels` of each class's top-1 accuracy, in percent."""
    labels_a = np.asarray(labels, dtype=np.int64)
    preds_a = np.asarray(preds, dtype=np.int64)
    if labels_a.size == 0:
        return 0.0
    accs = [float((preds_a[labels_a == c] == c).mean()) for c in np.unique(labels_a)]
    return float(100.0 * np.mean(accs))


def label_smoothing_loss(logits: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """(1 - eps) * NLL + eps * mean over classes of -log p, averaged over the batch.

    Written out as docs/reference.md ("Training recipe") states it; training uses the equal and faster
    `F.cross_entropy(label_smoothing=eps)` (a test checks they agree).
    """
    logp = logits.float().log_softmax(dim=-1)
    nll = -logp.gather(1, target[:, None]).squeeze(1)
    return ((1 - eps) * nll + eps * (-logp.mean(dim=-1))).mean()
