"""Rebuild a trained model from a `tokshift train` model.pt or a released `.pth` of the original TokShift.

A model.pt carries its config and class names. The original's `.pth` carries neither,
so its config comes from the zoo name it was trained as, and its class names default
to Kinetics-400's sorted labels when its head has 400 outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tokshift.checkpoints import (
    NPZ,
    ORIGINAL,
    Checkpoint,
    CheckpointFormatError,
    load_state_dict_checked,
    open_checkpoint,
)
from tokshift.fileio import atomic_torch_save, sha256_file
from tokshift.models import build_model
from tokshift.zoo import ZooConfig, get_config, zoo_names

__all__ = ["Imported", "TrainedModel", "import_original", "load_trained_model", "trained_from_checkpoint"]


@dataclass
class TrainedModel:
    model: nn.Module
    config: ZooConfig
    classes: list[str]
    checkpoint: dict[str, Any]


def _default_classes(path: Path, num_classes: int, classes: Sequence[str] | None) -> list[str]:
    if classes is not None:
        return [str(c) for c in classes]
    if num_classes == 400:
        from tokshift.data.labels import kinetics400_classes

        return kinetics400_classes()
    raise ValueError(
        f"checkpoint {path} has a {num_classes}-class head and records no class names; "
        "pass them (classes=[...]) in the order of its integer labels"
    )


def _original_config(ckpt: Checkpoint, model_name: str | None) -> ZooConfig:
    """The zoo config an original `.pth` was trained as, with its head's class count."""
    if model_name is None:
        raise ValueError(
            f"checkpoint {ckpt.path} is a {ckpt.description}, which does not record its model; "
            f"pass the zoo name it was trained as (--model / model_name=), one of: {', '.join(zoo_names())}"
        )
    cfg = get_config(model_name)
    n = ckpt.head_classes
    if n is None:
        raise CheckpointFormatError(f"checkpoint {ckpt.path} has no classifier head ('head.weight')")
    return cfg if n == cfg.num_classes else cfg.replace(num_classes=n)


def trained_from_checkpoint(
    ckpt: Checkpoint,
    device: torch.device,
    model_name: str | None = None,
    classes: Sequence[str] | None = None,
) -> TrainedModel:
    """The model of an already read checkpoint (see `load_trained_model`)."""
    path = ckpt.path
    if ckpt.kind == NPZ:
        raise ValueError(
            f"{path} holds ImageNet-21k backbone weights (Google ViT .npz) without a trained classifier; "
            "fine-tune them first (tokshift train), or build_model(..., pretrained=path) to start from them"
        )
    if ckpt.kind == ORIGINAL:
        cfg = _original_config(ckpt, model_name)
        names = _default_classes(path, cfg.num_classes, classes)
        info = {"format": ckpt.kind, **ckpt.meta}
    else:
        if "classes" not in ckpt.meta:
            raise CheckpointFormatError(f"checkpoint {path} has no 'classes' entry; is it a `tokshift train` model.pt?")
        cfg = ZooConfig.from_dict(ckpt.meta["config"])
        if model_name is not None and model_name != cfg.name:
            raise ValueError(f"checkpoint {path} holds model {cfg.name!r}, not {model_name!r}; drop the model name")
        names = [str(c) for c in (classes if classes is not None else ckpt.meta["classes"])]
        info = dict(ckpt.meta)
    if len(names) != cfg.num_classes:
        raise ValueError(f"checkpoint {path} lists {len(names)} classes but its model has {cfg.num_classes} outputs")
    model = build_model(cfg.model_dict())
    # A trained model must fit as it is: no position-table resize that would hide a wrong zoo name.
    state = ckpt.state_dict_for(model, resize_pos=False)
    load_state_dict_checked(model, state, f"checkpoint {path} ({ckpt.description}, model {cfg.name!r})")
    model.to(device).eval()
    return TrainedModel(model, cfg, names, info)


def load_trained_model(
    path: str | Path,
    device: torch.device,
    model_name: str | None = None,
    classes: Sequence[str] | None = None,
) -> TrainedModel:
    """The model in `path` in eval mode on `device`, with its config and class names.

    `path` is a tokshift model.pt or a `.pth` of the original TokShift (told apart by
    content). The latter needs `model_name`, the zoo entry it was trained as; its
    `classes` default to Kinetics-400's sorted labels for a 400-class head.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; train the model first (tokshift train) "
            "or import a released checkpoint of the original (import_original)"
        )
    return trained_from_checkpoint(open_checkpoint(path), device, model_name, classes)


@dataclass(frozen=True)
class Imported:
    out: Path
    sha256: str
    source: Path
    source_sha256: str
    model: str
    num_classes: int


def import_original(
    src: str | Path, model_name: str, out: str | Path, classes: Sequence[str] | None = None
) -> Imported:
    """Convert a released `.pth` of the original TokShift into a tokshift model.pt.

    The output holds what `tokshift train` writes (model, config, classes, epoch,
    metrics) plus the source's path and sha256, so evaluate and predict use it like
    any trained model and the result can be traced to the exact file it came from.
    """
    src, out = Path(src), Path(out)
    ckpt = open_checkpoint(src)
    if ckpt.kind != ORIGINAL:
        raise CheckpointFormatError(f"{src} is a {ckpt.description}, not a checkpoint of the original TokShift")
    trained = trained_from_checkpoint(ckpt, torch.device("cpu"), model_name, classes)
    epoch, best = ckpt.meta.get("epoch"), ckpt.meta.get("best_acc1")
    source_sha256 = sha256_file(src)
    state = {
        "model": {k: v.detach().cpu() for k, v in trained.model.state_dict().items()},
        "config": trained.config.to_dict(),
        "classes": trained.classes,
        "epoch": int(epoch) if epoch is not None else None,
        "metrics": {"best_acc1": float(best)} if best is not None else {},
        "pretrained": None,
        "source": str(src.resolve()),
        "source_sha256": source_sha256,
        "source_format": ckpt.description,
    }
    digest = atomic_torch_save(state, out)
    return Imported(out, digest, src, source_sha256, trained.config.name, trained.config.num_classes)
