"""The optimiser and the learning-rate schedule of a run."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..model import SegDINO
from ..train_config import TrainConfig



def backbone_lr_scale(cfg: TrainConfig) -> float:
    """The backbone's learning rate relative to the decoder's.

    Unset, it is 0.1 when the backbone starts from pretrained weights (keep what it knows), and
    1.0 from random weights (it has everything to learn).
    """
    if cfg.backbone_lr_scale is not None:
        return float(cfg.backbone_lr_scale)
    return 0.1 if (cfg.backbone_weights or cfg.init) else 1.0


def make_optimizer(model: SegDINO, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over two groups, decoder at ``lr`` and backbone at ``lr * backbone_lr_scale``."""
    groups = model.parameter_groups()
    param_groups = [{"params": groups["decoder"], "lr": cfg.lr, "name": "decoder"}]
    if groups["backbone"]:
        param_groups.append({"params": groups["backbone"], "lr": cfg.lr * backbone_lr_scale(cfg), "name": "backbone"})
    kwargs: dict[str, Any] = dict(weight_decay=cfg.weight_decay)
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW(param_groups, **kwargs)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then constant or cosine to 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


__all__ = ["backbone_lr_scale", "lr_factor", "make_optimizer"]
