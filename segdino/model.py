"""SegDINO assembly: DINOv3 backbone -> TPA -> SAD -> head."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from .backbone import DINOv3Backbone, get_spec
from .config import ModelConfig
from .errors import ConfigError
from .head import SegmentationHead
from .sad import ScaleAwareDecoder
from .tpa import TokenPyramidAdaptation
from .weights import load_backbone_weights


class SegDINO(nn.Module):
    """The SegDINO segmentation model.

    ``forward`` maps a normalised (B, 3, H, W) batch, H and W multiples of 16, to
    (B, num_classes, H, W) logits.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone = DINOv3Backbone(config.backbone, config.taps)
        self.config.taps = self.backbone.taps
        dim = config.decoder_dim
        self.tpa = TokenPyramidAdaptation(self.backbone.embed_dim, dim, resample=not config.no_tpa)
        self.sad = ScaleAwareDecoder(dim, config.norm, refine=not config.no_sad, blocks=config.sad_blocks)
        self.head = SegmentationHead(dim, config.num_classes)
        self._frozen = False

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.backbone(x)
        pyramid = self.tpa(maps)
        fused = self.sad(pyramid)
        return self.head(fused, x.shape[-2:])

    # --- training support -------------------------------------------------------------

    @property
    def backbone_frozen(self) -> bool:
        return self._frozen

    def freeze_backbone(self, frozen: bool = True) -> "SegDINO":
        """Stop (or restart) training the backbone: no gradients, and kept in eval mode."""
        self._frozen = frozen
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            self.backbone.eval()
        return self

    def train(self, mode: bool = True) -> "SegDINO":
        super().train(mode)
        if self._frozen:
            self.backbone.eval()
        return self

    def decoder_modules(self) -> list[nn.Module]:
        return [self.tpa, self.sad, self.head]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by part: ``backbone`` (empty when frozen) and ``decoder``."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        decoder = [p for m in self.decoder_modules() for p in m.parameters() if p.requires_grad]
        return {"backbone": backbone, "decoder": decoder}

    def count_parameters(self) -> dict[str, int]:
        backbone = sum(p.numel() for p in self.backbone.parameters())
        decoder = sum(p.numel() for m in self.decoder_modules() for p in m.parameters())
        return {"backbone": backbone, "decoder": decoder, "total": backbone + decoder}


def build_model(
    backbone: str = "vits16",
    num_classes: int = 1,
    decoder_dim: int = 256,
    backbone_weights: str | os.PathLike | None = None,
    freeze_backbone: bool = False,
    **config: Any,
) -> SegDINO:
    """Build a SegDINO model.

    Args:
        backbone: ``vitt16``, ``vits16``, ``vits16plus``, ``vitb16``, ``vitl16``, ``vith16plus``
            or ``vit7b16``.
        num_classes: output channels; 1 = binary (sigmoid), K >= 2 = K classes with background.
        decoder_dim: decoder width D.
        backbone_weights: a DINOv3 backbone file (Meta ``.pth``, Hugging Face or timm safetensors).
        freeze_backbone: keep the backbone fixed (no gradients, eval mode).
        **config: further :class:`ModelConfig` fields (``taps``, ``norm``, ``image_size``, ...).
    """
    get_spec(backbone)  # unknown names fail before anything is built
    try:
        cfg = ModelConfig(backbone=backbone, num_classes=num_classes, decoder_dim=decoder_dim, **config)
    except TypeError as e:
        raise ConfigError(f"build_model: {e}") from None
    model = SegDINO(cfg)
    if backbone_weights is not None:
        load_backbone_weights(model.backbone, backbone_weights)
    if freeze_backbone:
        model.freeze_backbone(True)
    return model
