"""Every model-zoo entry as a timm model: after ``import tokshift.timm``,
``timm.create_model("k400_tokshift_div4_8x32_base_224")`` builds it.

The entries are registered with timm's own registry, generated from `tokshift.zoo` (nothing
here types an architecture), so `timm.list_models`, `timm.list_pretrained`,
`timm.data.resolve_data_config` and ``create_model``'s keyword arguments work as for any timm
model. Weights are read by `tokshift.checkpoints.open_checkpoint`, so ``pretrained=True`` loads
every file tokshift reads (a model.pt, an original TokShift `.pth`, a Google `.npz`, an export)
into the same numbers that `tokshift.load` and `build_model(init_from=)` give (docs/timm.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, load_custom_pretrained, register_model

from tokshift import export
from tokshift.checkpoints import NPZ, Checkpoint, CheckpointMismatchError, open_checkpoint
from tokshift.engine.loading import load_state
from tokshift.errors import BadInput
from tokshift.models import VideoVisionTransformer, resolve_model_config
from tokshift.zoo import MODEL_KEYS, ZooConfig, get_config, zoo_names

__all__ = ["IMAGENET21K_URLS", "MEAN", "STD", "pretrained_cfgs", "trained_tag"]

# The ImageNet-21k weights each backbone starts from: config.yaml's `weights:` URLs, which the
# pipeline downloads (tests/test_timm_models.py checks that both say the same).
IMAGENET21K_URLS = {
    "ViT-B_16": "https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz",
    "ViT-L_16": "https://storage.googleapis.com/vit_models/imagenet21k/ViT-L_16.npz",
}
# tokshift.data.transforms.normalize: (x / 255 - 0.5) / 0.5 per channel.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

_PAPER = {"paper_name": "Token Shift Transformer for Video Classification", "paper_ids": "arXiv:2108.02432"}


def trained_tag(cfg: ZooConfig) -> str:
    """The pretrained tag of a trained checkpoint given as a file: ``k400_paper`` for an entry
    with the paper's recipe and numbers, else the dataset's name (``demo``)."""
    return f"{cfg.dataset}_paper" if cfg.paper_top1 is not None else cfg.dataset


def pretrained_cfgs(cfg: ZooConfig) -> dict[str, dict[str, Any]]:
    """timm's pretrained cfgs of one zoo entry, keyed ``name.tag``; the first with weights is the default.

    Evaluation resizes the short side to the crop size and crops the centre (crop_pct 1.0),
    linearly (`tokshift evaluate --resize` linear), and normalises with `MEAN` and `STD`.
    """
    shape = f"{cfg.arch} {cfg.backbone}, {cfg.num_frames} frames x stride {cfg.frame_stride}, {cfg.img_size} px"
    base = {
        "num_classes": cfg.num_classes,
        "input_size": (3, cfg.img_size, cfg.img_size),
        "fixed_input_size": True,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": MEAN,
        "std": STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        **_PAPER,
    }
    out: dict[str, dict[str, Any]] = {}
    if cfg.imagenet_weights is not None:
        out[f"{cfg.name}.in21k"] = {
            **base,
            "url": IMAGENET21K_URLS[cfg.imagenet_weights],
            "custom_load": True,  # a Google .npz, not a torch state dict
            "description": f"{shape}: the ImageNet-21k {cfg.imagenet_weights} backbone training starts from, "
            f"its {cfg.num_classes}-class head zero",
        }
    out[f"{cfg.name}.{trained_tag(cfg)}"] = {
        **base,
        "description": f"{shape}: trained on {cfg.dataset}; give the checkpoint with "
        "pretrained_cfg_overlay=dict(file=PATH) (a model.pt, an original .pth or an export)",
    }
    return out


# timm's registry reads the cfgs of this module's entrypoints from `default_cfgs`.
default_cfgs = generate_default_cfgs({k: v for n in zoo_names() for k, v in pretrained_cfgs(get_config(n)).items()})


def _constructor_args(cfg: ZooConfig) -> dict[str, Any]:
    """The keyword arguments `VideoVisionTransformer.from_config` builds `cfg` with (that classmethod
    run with `dict` as its class), so both ways of building a zoo model stay one architecture."""
    return VideoVisionTransformer.from_config.__func__(dict, cfg)  # type: ignore[attr-defined]


def _square(img_size: Any, name: str) -> int:
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
    if len(size) != 2 or size[0] != size[1]:
        raise BadInput(f"img_size={img_size!r} for timm model {name!r}: give one int (the models take square frames)")
    return int(size[0])


def _video_vit(name: str, **kwargs: Any) -> VideoVisionTransformer:
    """The model class `build_model_with_cfg` calls: zoo entry `name`, with the zoo fields among
    `kwargs` (num_classes, num_frames, img_size, ...) replaced and the rest passed to timm's ViT."""
    zoo = get_config(name)
    fields = {k: kwargs.pop(k) for k in MODEL_KEYS if k in kwargs}
    if "img_size" in fields:
        size = fields["img_size"] = _square(fields["img_size"], name)
        # The recipe's training short side scales with the frame size (the zoo's own do, roughly).
        longest = zoo.train_short_side[1]
        fields["train_short_side"] = (size, max(size, round(longest * size / zoo.img_size)))
    cfg = zoo.replace(**fields)
    model = VideoVisionTransformer(**{**_constructor_args(cfg), **kwargs})
    model.zoo_config = cfg  # frames, stride and classes a caller samples clips with
    return model


def _check_architecture(ckpt: Checkpoint, model: VideoVisionTransformer, name: str, given: set[str]) -> None:
    """A checkpoint that records its model must be the architecture asked for, except in the fields the
    caller set (``num_classes=``, ``img_size=``, ...): weights of another entry of the same shapes (a ViT's
    for a TokShift) would otherwise load without a word."""
    saved = ckpt.meta.get("config")
    if not isinstance(saved, Mapping):
        return
    try:
        theirs = resolve_model_config(saved)
    except ValueError:
        return  # a config without the architecture keys: the strict load below still checks the shapes
    ours = model.zoo_config.model_dict()
    differ = [k for k in MODEL_KEYS if k not in given and theirs[k] != ours[k]]
    if differ:
        saved_name = saved.get("name", "?")
        found = ", ".join(f"{k}={theirs[k]!r} (not {ours[k]!r})" for k in differ)
        raise CheckpointMismatchError(
            f"checkpoint {ckpt.path} holds model {saved_name!r}, which timm model {name!r} is not: {found}. "
            f"Create timm.create_model({saved_name!r}, ...) instead, or pass {', '.join(f'{k}=' for k in differ)} "
            "to change the model"
        )


def _load_file(model: VideoVisionTransformer, location: str | Path, name: str, given: set[str]) -> None:
    """Load any checkpoint tokshift reads into `model`, as `build_model(init_from=)` does.

    A Google `.npz` gets a zero head and its position table resized to the model's grid. A trained
    checkpoint must fit as it is (a wrong zoo name fails instead of loading resized), unless the caller
    changed the model: ``img_size=`` resizes its position table, ``num_classes=`` of another count
    starts a zero head.
    """
    ckpt = open_checkpoint(location)
    _check_architecture(ckpt, model, name, given)
    state = ckpt.state_dict_for(model, resize_pos=ckpt.kind == NPZ or "img_size" in given)
    have, want = ckpt.head_classes, int(model.head.weight.shape[0])
    if have is not None and have != want and "num_classes" in given:
        state["head.weight"] = torch.zeros_like(model.head.weight)
        state["head.bias"] = torch.zeros_like(model.head.bias)
    elif have is not None and have != want:
        mine = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("head.")}
        if mine == {k: v.shape for k, v in state.items() if not k.startswith("head.")}:  # else load_state says all
            raise CheckpointMismatchError(
                f"checkpoint {ckpt.path} ({ckpt.description}) has a {have}-class head, timm model {name!r} has "
                f"{want} classes: pass num_classes={have} to keep its head, or another num_classes for a new zero head"
            )
    fix = f"Give a checkpoint of zoo model {name!r}, or create the timm model of the zoo name it was trained as"
    load_state(model, state, f"checkpoint {ckpt.path} ({ckpt.description}) for timm model {name!r}", fix)
    classes = ckpt.meta.get("classes")
    if have == want and isinstance(classes, (list, tuple)) and len(classes) == want:
        model.pretrained_cfg["label_names"] = tuple(str(c) for c in classes)


def _hub_file(hub_id: str, filename: str | None, cache_dir: Any) -> str:
    """The weights file of a Hugging Face Hub repository in the local cache (downloaded when missing);
    for an export's model.safetensors, its config.json beside it, which `open_checkpoint` reads it with."""
    from huggingface_hub import hf_hub_download  # installed with timm, which downloads through it

    repo, _, revision = hub_id.partition("@")
    filename = filename or export.WEIGHTS_FILE
    if filename == export.WEIGHTS_FILE:
        hf_hub_download(repo, export.CONFIG_FILE, revision=revision or None, cache_dir=cache_dir)
    return hf_hub_download(repo, filename, revision=revision or None, cache_dir=cache_dir)


def _load_pretrained(model: VideoVisionTransformer, name: str, given: set[str], cache_dir: Any) -> None:
    """``pretrained=True``: the weights the model's pretrained cfg points at, found in timm's order (a Hub
    source, a file or folder, a Hub id, a URL; a URL is downloaded to timm's cache), through `_load_file`."""
    cfg = model.pretrained_cfg
    tag = f"{name}.{cfg['tag']}" if cfg.get("tag") else name
    hub_id = cfg.get("hf_hub_id")
    if cfg.get("source") == "hf-hub" or (hub_id and not cfg.get("file") and cfg.get("state_dict") is None):
        _load_file(model, _hub_file(hub_id, cfg.get("hf_hub_filename"), cache_dir), name, given)
        return
    if cfg.get("state_dict") is not None:
        raise BadInput(
            f"timm model {tag}: a state dict in pretrained_cfg_overlay is not read; give its file "
            "(pretrained_cfg_overlay=dict(file=PATH)) or call model.load_state_dict(state) on the built model"
        )
    if not (cfg.get("file") or cfg.get("url")):
        raise BadInput(
            f"timm model {tag} has no weights to load: give a checkpoint with pretrained_cfg_overlay=dict(file=PATH) "
            "(a tokshift model.pt, an original TokShift .pth, a Google ViT .npz or an export folder), "
            "or create it with pretrained=False"
        )
    load_custom_pretrained(
        model, cfg, load_fn=functools.partial(_load_file, name=name, given=given), cache_dir=cache_dir
    )


def _create(name: str, pretrained: bool = False, **kwargs: Any) -> VideoVisionTransformer:
    """Build zoo model `name` through timm's builder (pretrained cfg, kwargs from it), then load its weights."""
    cache_dir = kwargs.pop("cache_dir", None)
    given = {k for k in MODEL_KEYS if kwargs.get(k) is not None}
    model = build_model_with_cfg(functools.partial(_video_vit, name), name, pretrained=False, **kwargs)
    if pretrained:
        _load_pretrained(model, name, given, cache_dir)
    return model


def _entrypoint(name: str) -> Callable[..., VideoVisionTransformer]:
    def create(pretrained: bool = False, **kwargs: Any) -> VideoVisionTransformer:
        return _create(name, pretrained, **kwargs)

    cfg = get_config(name)
    create.__name__ = create.__qualname__ = name  # timm registers an entrypoint under its function name
    create.__module__ = __name__
    create.__doc__ = (
        f"Zoo model {name}: {cfg.arch}, {cfg.backbone}, {cfg.num_frames} frames x stride {cfg.frame_stride}, "
        f"{cfg.img_size} px, {cfg.num_classes} classes."
    )
    return create


for _name in zoo_names():
    register_model(_entrypoint(_name))
