"""Models with their weights: built from a config and started from a checkpoint file, or
rebuilt from a `tokshift train` model.pt or a released `.pth` of the original TokShift.

This module sits above `tokshift.models` (the architectures) and `tokshift.checkpoints`
(files read into state dicts). A model.pt carries its config and class names, and so does an
export (`tokshift export`: safetensors weights, config.json), read wherever a model.pt is. The
original's `.pth` carries neither, so its config comes from the zoo name it was trained
as, and its class names default to Kinetics-400's sorted labels when its head has 400 outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tokshift import provenance
from tokshift.checkpoints import (
    NPZ,
    ORIGINAL,
    Checkpoint,
    CheckpointFormatError,
    CheckpointMismatchError,
    open_checkpoint,
)
from tokshift.errors import BadInput, InputMissing
from tokshift.fileio import atomic_torch_save, refuse_output_over_input, sha256_file
from tokshift.models import VideoVisionTransformer
from tokshift.zoo import ZooConfig, get_config, zoo_names

__all__ = [
    "Imported",
    "TrainedModel",
    "build_model",
    "import_original",
    "load_state",
    "load_trained_model",
    "trained_from_checkpoint",
]

log = logging.getLogger(__name__)


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, fix: str) -> None:
    """`model.load_state_dict(state, strict=True)`; a misfit names `source`, every key torch
    reports (missing, unexpected, both shapes of a mismatch) and `fix`, what to do about it."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [line.strip().rstrip(".") for line in str(exc).splitlines()]
        found = "; ".join(line for line in lines if line and not line.startswith("Error(s) in loading state_dict"))
        raise CheckpointMismatchError(f"{source} does not fit the model: {found or exc}. {fix}") from exc


def _fit_head(state: dict[str, torch.Tensor], model: VideoVisionTransformer, ckpt: Checkpoint) -> None:
    """Keep a trained head whose class count matches the model; otherwise start it at zero."""
    have, want = ckpt.head_classes, int(model.head.weight.shape[0])
    if have is None or have == want:
        return
    log.info(
        "%s %s has a %d-class head, the model has %d classes: head re-initialised to zeros for the new classes",
        ckpt.description,
        ckpt.path,
        have,
        want,
    )
    state["head.weight"] = torch.zeros_like(model.head.weight)
    state["head.bias"] = torch.zeros_like(model.head.bias)


def build_model(
    cfg_or_name: str | ZooConfig | Mapping[str, Any],
    num_classes: int | None = None,
    init_from: str | Path | None = None,
) -> VideoVisionTransformer:
    """A TokShift or ViT video classifier, with random weights or those of `init_from`.

    Args:
        cfg_or_name: a zoo name, a ZooConfig, or a dict with the keys in `tokshift.zoo.MODEL_KEYS`.
        num_classes: overrides the config's class count (the head size).
        init_from: the checkpoint the model starts from, its format read from its content: a Google
            ImageNet-21k ViT `.npz` (head zero-initialised), a `.pth` of the original TokShift, a
            tokshift `model.pt` or an export folder (head kept when its class count matches,
            zero-initialised otherwise). A position table of another patch grid is resized
            (`tokshift.checkpoints.resize_pos_embed`).
    """
    model = VideoVisionTransformer.from_config(cfg_or_name, num_classes)
    if init_from is None:
        return model
    path = Path(init_from)
    if not (path.is_file() or path.is_dir()):
        raise InputMissing(f"initial weights {path} not found; run `snakemake download_weights` or `tokshift download`")
    ckpt = open_checkpoint(path)
    state = ckpt.state_dict_for(model)
    if ckpt.kind != NPZ:
        _fit_head(state, model, ckpt)
    fix = "Start from a checkpoint of the same backbone (depth, width, patch size) as the model"
    load_state(model, state, f"checkpoint {path} ({ckpt.description})", fix)
    return model


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
    raise BadInput(
        f"checkpoint {path} has a {num_classes}-class head and records no class names; "
        "pass them (classes=[...]) in the order of its integer labels"
    )


def _original_config(ckpt: Checkpoint, model_name: str | None) -> ZooConfig:
    """The zoo config an original `.pth` was trained as, with its head's class count."""
    if model_name is None:
        raise BadInput(
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
        raise BadInput(
            f"{path} holds ImageNet-21k backbone weights (Google ViT .npz) without a trained classifier; "
            "fine-tune them first (tokshift train), or build_model(..., init_from=path) to start from them"
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
            raise BadInput(f"checkpoint {path} holds model {cfg.name!r}, not {model_name!r}; drop the model name")
        names = [str(c) for c in (classes if classes is not None else ckpt.meta["classes"])]
        info = dict(ckpt.meta)
    if len(names) != cfg.num_classes:
        raise BadInput(f"checkpoint {path} lists {len(names)} classes but its model has {cfg.num_classes} outputs")
    model = VideoVisionTransformer.from_config(cfg)
    # A trained model must fit as it is: no position-table resize that would hide a wrong zoo name.
    state = ckpt.state_dict_for(model, resize_pos=False)
    if ckpt.kind == ORIGINAL:
        fix = "Pass the zoo name the checkpoint was trained as (--model / model_name=)"
    else:
        fix = "Its weights do not match its own config: re-copy the file, or train or import it again"
    load_state(model, state, f"checkpoint {path} ({ckpt.description}, model {cfg.name!r})", fix)
    model.to(device).eval()
    return TrainedModel(model, cfg, names, info)


def load_trained_model(
    path: str | Path,
    device: torch.device,
    model_name: str | None = None,
    classes: Sequence[str] | None = None,
) -> TrainedModel:
    """The model in `path` in eval mode on `device`, with its config and class names.

    `path` is a tokshift model.pt, an export (its folder or a file in it) or a `.pth` of the
    original TokShift (told apart by content). The latter needs `model_name`, the zoo entry it
    was trained as; its `classes` default to Kinetics-400's sorted labels for a 400-class head.
    """
    if not (Path(path).is_file() or Path(path).is_dir()):
        raise InputMissing(
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
    src: str | Path,
    model_name: str,
    out: str | Path,
    classes: Sequence[str] | None = None,
    class_order: str = "sorted",
) -> Imported:
    """Convert a released `.pth` of the original TokShift into a tokshift model.pt.

    The output holds what `tokshift train` writes (model, config, classes, epoch,
    metrics) plus the source's path and sha256, so evaluate and predict use it like
    any trained model and the result can be traced to the exact file it came from.
    `class_order` says how the checkpoint's head rows are ordered (tokshift.engine.class_order);
    they are put in the order of `classes`.
    """
    from tokshift.engine.class_order import head_rows

    src, out = Path(src), Path(out)
    refuse_output_over_input(out, [src], name="--out")
    ckpt = open_checkpoint(src)
    if ckpt.kind != ORIGINAL:
        raise CheckpointFormatError(f"{src} is a {ckpt.description}, not a checkpoint of the original TokShift")
    trained = trained_from_checkpoint(ckpt, torch.device("cpu"), model_name, classes)
    rows = head_rows(trained.classes, class_order)
    if rows != list(range(len(rows))):
        head = trained.model.get_classifier() if hasattr(trained.model, "get_classifier") else trained.model.head
        with torch.no_grad():
            head.weight.copy_(head.weight[rows].clone())
            head.bias.copy_(head.bias[rows].clone())
    epoch, best = ckpt.meta.get("epoch"), ckpt.meta.get("best_acc1")
    source_sha256 = sha256_file(src)
    state = {
        "model": {k: v.detach().cpu() for k, v in trained.model.state_dict().items()},
        "config": trained.config.to_dict(),
        "classes": trained.classes,
        "epoch": int(epoch) if epoch is not None else None,
        "metrics": {"best_acc1": float(best)} if best is not None else {},
        "init_from": None,  # as in a trained model.pt: the file a training started from
        "source": str(src.resolve()),
        "source_sha256": source_sha256,
        "source_format": ckpt.description,
        "class_order": class_order,
        # The code and software that converted it (the original's training is not recorded in its .pth).
        "provenance": provenance.finish(provenance.collect("import-original")),
    }
    digest = atomic_torch_save(state, out)
    return Imported(out, digest, src, source_sha256, trained.config.name, trained.config.num_classes)
