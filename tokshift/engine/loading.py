"""Rebuild a trained model from a `tokshift train` model.pt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tokshift.engine.checkpoint import load_model_checkpoint
from tokshift.models import build_model, load_state_dict_checked
from tokshift.zoo import ZooConfig


@dataclass
class TrainedModel:
    model: nn.Module
    config: ZooConfig
    classes: list[str]
    checkpoint: dict[str, Any]


def load_trained_model(path: str | Path, device: torch.device) -> TrainedModel:
    """The model in `path` in eval mode on `device`, with its config and class names."""
    state = load_model_checkpoint(path)
    cfg = ZooConfig.from_dict(state["config"])
    model = build_model(cfg.model_dict())
    load_state_dict_checked(model, state["model"], f"checkpoint {path} (model {cfg.name!r})")
    model.to(device).eval()
    classes = [str(c) for c in state["classes"]]
    if len(classes) != cfg.num_classes:
        raise ValueError(f"checkpoint {path} lists {len(classes)} classes but its model has {cfg.num_classes} outputs")
    return TrainedModel(model, cfg, classes, {k: v for k, v in state.items() if k != "model"})
