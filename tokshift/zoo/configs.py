"""The model zoo: one typed record per configuration, the single source of truth.

The Snakefile, the CLI, the training code and the tests all read these records;
nothing else in the project types a hyperparameter of a zoo entry. Architecture
(backbones) is kept apart from the training recipe, and the paper's numbers are
kept beside them so the results table can compare against them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from tokshift.errors import BadInput

Arch = Literal["tokshift", "vit"]


@dataclass(frozen=True)
class Backbone:
    """A ViT backbone's shape (its ImageNet-21k weights are named in config.yaml under `weights`)."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    patch_size: int = 16


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("ViT-B_16", embed_dim=768, depth=12, num_heads=12),
        Backbone("ViT-L_16", embed_dim=1024, depth=24, num_heads=16),
        # A tiny ViT trained from scratch on the generated demo dataset.
        Backbone("demo-tiny", embed_dim=96, depth=4, num_heads=4),
    )
}


@dataclass(frozen=True)
class ZooConfig:
    """One model-zoo entry: architecture, input sampling and training recipe."""

    name: str
    dataset: str
    arch: Arch
    backbone: str
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    patch_size: int
    img_size: int
    num_frames: int
    frame_stride: int
    shift_div: int
    num_classes: int
    # The backbone's ImageNet-21k weights every training starts from (a `weights` entry of
    # config.yaml, e.g. "ViT-B_16"), or None: from scratch unless `tokshift train --init-from` gives a file.
    imagenet_weights: str | None
    # Training recipe. `lr` is for the reference global batch (batch_size * gpus * accum_steps);
    # training scales it linearly to the global batch actually used.
    optimizer: Literal["sgd", "adamw"]
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    gpus: int
    accum_steps: int
    epochs: int
    lr_schedule: Literal["step", "onecycle"]
    lr_milestones: tuple[int, ...]
    lr_gamma: float
    warmup_epochs: float
    grad_clip: float | None
    label_smoothing: float
    train_short_side: tuple[int, int]
    # What the paper reports for this entry (None where it has no number).
    paper_top1: float | None = None
    paper_gflops: float | None = None
    notes: str = field(default="", compare=False)

    @property
    def reference_global_batch(self) -> int:
        return self.batch_size * self.gpus * self.accum_steps

    def model_dict(self) -> dict[str, Any]:
        """The architecture keys that `tokshift.models.build_model` accepts."""
        return {k: getattr(self, k) for k in MODEL_KEYS}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        d["train_short_side"] = list(self.train_short_side)
        return d

    def replace(self, **overrides: Any) -> ZooConfig:
        """A copy with some fields changed; unknown fields and bad values are rejected."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            hint = "; `pretrained` is now `imagenet_weights`" if "pretrained" in unknown else ""
            raise BadInput(f"unknown zoo field(s) {unknown} for {self.name!r}{hint}; known fields: {sorted(known)}")
        overrides = {k: _coerce(k, v, getattr(self, k)) for k, v in overrides.items()}
        cfg = dataclasses.replace(self, **overrides)
        validate(cfg)
        return cfg

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ZooConfig:
        """Rebuild a config saved with `to_dict` (e.g. inside a checkpoint)."""
        known = {f.name for f in dataclasses.fields(cls)}
        if "imagenet_weights" not in d and "pretrained" in d:  # checkpoints written before the rename
            d = {**d, "imagenet_weights": d["pretrained"]}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["lr_milestones"] = tuple(kwargs.get("lr_milestones", ()))
        kwargs["train_short_side"] = tuple(kwargs["train_short_side"])
        cfg = cls(**kwargs)
        validate(cfg)
        return cfg


def _coerce(key: str, value: Any, current: Any) -> Any:
    """Cast an override (often a string from a command line) to the field's current type."""
    if value is None or current is None:
        return value
    try:
        if isinstance(current, tuple):
            if isinstance(value, str):
                value = [v for v in value.strip("[]() ").split(",") if v.strip()]
            return tuple(int(v) for v in value)
        if isinstance(current, bool):
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        if isinstance(current, int) and not isinstance(current, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) else int(value)
        if isinstance(current, float):
            return float(value)
    except (TypeError, ValueError):
        raise BadInput(f"zoo field {key}={value!r} must be of type {type(current).__name__}") from None
    return value


MODEL_KEYS = (
    "arch",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "patch_size",
    "img_size",
    "num_frames",
    "shift_div",
    "num_classes",
)


def validate(cfg: ZooConfig) -> None:
    """Reject configurations that cannot build or train, naming the field."""
    problems = []
    if cfg.arch not in ("tokshift", "vit"):
        problems.append(f"arch={cfg.arch!r} (expected 'tokshift' or 'vit')")
    if cfg.img_size % cfg.patch_size:
        problems.append(f"img_size={cfg.img_size} is not a multiple of patch_size={cfg.patch_size}")
    if cfg.embed_dim % cfg.num_heads:
        problems.append(f"embed_dim={cfg.embed_dim} is not a multiple of num_heads={cfg.num_heads}")
    for key in (
        "num_frames",
        "frame_stride",
        "shift_div",
        "num_classes",
        "batch_size",
        "gpus",
        "accum_steps",
        "epochs",
        "depth",
    ):
        if int(getattr(cfg, key)) < 1:
            problems.append(f"{key}={getattr(cfg, key)} must be >= 1")
    if cfg.optimizer not in ("sgd", "adamw"):
        problems.append(f"optimizer={cfg.optimizer!r} (expected 'sgd' or 'adamw')")
    if cfg.lr_schedule not in ("step", "onecycle"):
        problems.append(f"lr_schedule={cfg.lr_schedule!r} (expected 'step' or 'onecycle')")
    if cfg.lr <= 0:
        problems.append(f"lr={cfg.lr} must be > 0")
    lo, hi = cfg.train_short_side
    if not (cfg.img_size <= lo <= hi):
        problems.append(f"train_short_side={cfg.train_short_side} must satisfy img_size <= lo <= hi")
    if not 0 <= cfg.label_smoothing < 1:
        problems.append(f"label_smoothing={cfg.label_smoothing} must be in [0, 1)")
    if problems:
        raise BadInput(f"invalid zoo config {cfg.name!r}: " + "; ".join(problems))


def _k400(
    name: str,
    arch: Arch,
    backbone: str,
    img_size: int,
    num_frames: int,
    batch_size: int,
    gpus: int,
    lr: float,
    short_side: tuple[int, int],
    paper_top1: float,
    paper_gflops: float,
) -> ZooConfig:
    """A Kinetics-400 entry with the original recipe (docs/reference.md, "Training recipe")."""
    b = BACKBONES[backbone]
    return ZooConfig(
        name=name,
        dataset="k400",
        arch=arch,
        backbone=backbone,
        embed_dim=b.embed_dim,
        depth=b.depth,
        num_heads=b.num_heads,
        mlp_ratio=b.mlp_ratio,
        patch_size=b.patch_size,
        img_size=img_size,
        num_frames=num_frames,
        frame_stride=32,
        shift_div=4,
        num_classes=400,
        imagenet_weights=backbone,
        optimizer="sgd",
        lr=lr,
        momentum=0.9,
        weight_decay=0.0,
        batch_size=batch_size,
        gpus=gpus,
        accum_steps=10,
        epochs=18,
        lr_schedule="step",
        lr_milestones=(10, 15),
        lr_gamma=0.1,
        warmup_epochs=0.0,
        grad_clip=1.0,
        label_smoothing=0.1,  # the original's effective value (docs/reference.md, "Training recipe")
        train_short_side=short_side,
        paper_top1=paper_top1,
        paper_gflops=paper_gflops,
    )


def _demo(name: str, arch: Arch) -> ZooConfig:
    """A tiny model that learns the generated demo dataset on 2 CPU cores in about a minute."""
    b = BACKBONES["demo-tiny"]
    return ZooConfig(
        name=name,
        dataset="demo",
        arch=arch,
        backbone=b.name,
        embed_dim=b.embed_dim,
        depth=b.depth,
        num_heads=b.num_heads,
        mlp_ratio=b.mlp_ratio,
        patch_size=b.patch_size,
        img_size=64,
        num_frames=8,
        frame_stride=2,
        shift_div=4,
        num_classes=4,
        imagenet_weights=None,
        # From scratch a ViT wants AdamW with a warm-up; the K400 entries keep SGD.
        optimizer="adamw",
        lr=1e-3,
        momentum=0.9,
        weight_decay=0.05,
        batch_size=16,
        gpus=1,
        accum_steps=1,
        epochs=8,
        lr_schedule="onecycle",
        lr_milestones=(),
        lr_gamma=0.1,
        warmup_epochs=1.0,
        grad_clip=1.0,
        label_smoothing=0.01,
        train_short_side=(64, 72),
    )


ZOO: dict[str, ZooConfig] = {
    c.name: c
    for c in (
        _k400("k400_vit_8x32_224", "vit", "ViT-B_16", 224, 8, 21, 2, 0.1, (224, 330), 76.02, 134.7),
        _k400("k400_tokshift_div4_8x32_base_224", "tokshift", "ViT-B_16", 224, 8, 21, 2, 0.1, (224, 330), 77.28, 134.7),
        _k400(
            "k400_tokshift_div4_8x32_base_256", "tokshift", "ViT-B_16", 256, 8, 16, 2, 0.076, (256, 380), 77.68, 175.8
        ),
        _k400("k400_tokshift_div4_8x32_base_384", "tokshift", "ViT-B_16", 384, 8, 1, 8, 0.01, (384, 512), 78.14, 394.7),
        _k400(
            "k400_tokshift_div4_16x32_base_224", "tokshift", "ViT-B_16", 224, 16, 3, 4, 0.03, (224, 330), 78.18, 268.5
        ),
        _k400(
            "k400_tokshift_div4_8x32_large_384", "tokshift", "ViT-L_16", 384, 8, 1, 8, 0.02, (384, 512), 79.83, 1397.6
        ),
        _k400(
            "k400_tokshift_div4_12x32_large_384", "tokshift", "ViT-L_16", 384, 12, 1, 8, 0.03, (384, 512), 80.40, 2096.4
        ),
        _demo("demo_vit", "vit"),
        _demo("demo_tokshift", "tokshift"),
    )
}
for _cfg in ZOO.values():
    validate(_cfg)
