"""What a run starts from: the model (fresh, with a pretrained backbone, or ``--init``), and
the facts about its weights that the run records and tells the user."""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..checkpoint import load_model
from ..errors import CheckpointError, ConfigError
from ..fast import compile_available
from ..model import SegDINO, build_model
from ..train_config import TrainConfig
from .sampling import default_workers

log = logging.getLogger("segdino.train")


def build_run_model(cfg: TrainConfig) -> SegDINO:
    """The model a run starts from: fresh (optionally with a pretrained backbone) or ``--init``."""
    if cfg.init:
        model = init_from(cfg)
    else:
        model = build_model(
            cfg.backbone, num_classes=cfg.num_classes, decoder_dim=cfg.decoder_dim,
            backbone_weights=cfg.backbone_weights, image_size=cfg.image_size,
            mask_threshold=cfg.mask_threshold, **cfg.model_options(), **_model_extras(cfg),
        )
    if cfg.freeze_backbone:
        model.freeze_backbone(True)
    return model


def _model_extras(cfg: TrainConfig) -> dict[str, Any]:
    extras: dict[str, Any] = {}
    if cfg.extra.get("volume"):
        extras["volume"] = cfg.extra["volume"]
    if cfg.extra.get("class_names"):
        extras["class_names"] = tuple(cfg.extra["class_names"])
    return extras


def init_from(cfg: TrainConfig) -> SegDINO:
    """A whole model to fine-tune (``--init``): ours or the authors'; a new head if classes differ."""
    src = load_model(cfg.init)
    c = src.config
    if cfg.extra.get("backbone_explicit") and cfg.backbone != c.backbone:
        raise ConfigError(f"--backbone {cfg.backbone} contradicts --init {cfg.init}, whose backbone is {c.backbone}")
    if cfg.extra.get("decoder_dim_explicit") and cfg.decoder_dim != c.decoder_dim:
        raise ConfigError(f"--decoder-dim {cfg.decoder_dim} contradicts --init {cfg.init}, "
                          f"whose decoder width is {c.decoder_dim}")
    cfg.backbone, cfg.decoder_dim = c.backbone, c.decoder_dim
    model = build_model(c.backbone, num_classes=cfg.num_classes, decoder_dim=c.decoder_dim, taps=c.taps,
                        norm=c.norm, image_size=cfg.image_size, mean=c.mean, std=c.std,
                        mask_threshold=cfg.mask_threshold, no_tpa=c.no_tpa, no_sad=c.no_sad,
                        sad_blocks=c.sad_blocks, **_model_extras(cfg))
    state = src.state_dict()
    if cfg.num_classes != c.num_classes:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        log.info("--init: %s has %d output channel(s), the task needs %d: the head starts afresh",
                 cfg.init, c.num_classes, cfg.num_classes)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise CheckpointError(f"--init {cfg.init}: keys do not fit (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model


NO_PRETRAINED_WARNING = (
    "warning: training without pretrained weights: the DINOv3 backbone starts from random values and must "
    "learn its features from this dataset alone, which gives far lower scores than the pretrained features "
    "SegDINO is built on (Kvasir-SEG test Dice about 0.75 instead of 0.88). Get a DINOv3 backbone file as "
    "docs/WEIGHTS.md explains and pass --backbone-weights FILE (or --init a trained model)."
)


def is_pretrained(cfg: TrainConfig) -> bool:
    """Whether the run starts from learnt weights: a DINOv3 backbone file, or a whole model (--init)."""
    return bool(cfg.backbone_weights or cfg.init)


def run_record(cfg: TrainConfig, model: SegDINO) -> dict[str, Any]:
    """Facts written beside the options in config.yaml: ``pretrained``, and the weights file's
    format and SHA-256 when a backbone file was loaded."""
    record: dict[str, Any] = {"pretrained": is_pretrained(cfg)}
    info = getattr(model.backbone, "weights_info", None)
    if info:
        record["backbone_weights_format"] = info["format"]
        record["backbone_weights_sha256"] = info["sha256"]
    return record


def resolve_runtime(cfg: TrainConfig, device: torch.device) -> None:
    """Make ``cfg`` say what will run on ``device``: torch.compile only where it works (CUDA with Triton),
    and the fused decoder only where the training graph is compiled; DataLoader workers, when not
    given, chosen for the device (:func:`~segdino.training.sampling.default_workers`)."""
    cfg.compile = bool(cfg.compile and compile_available(device))
    cfg.fused_decoder = bool(cfg.fused_decoder and cfg.compile)
    if cfg.num_workers is None:
        cfg.num_workers = default_workers(device.type != "cpu")


__all__ = ["NO_PRETRAINED_WARNING", "build_run_model", "init_from", "is_pretrained", "resolve_runtime", "run_record"]
