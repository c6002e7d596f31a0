"""TPA, Token Pyramid Adaptation: four same-stride token maps -> a pseudo multi-scale pyramid.

Tap i (shallow to deep) is projected to the decoder width by a 1x1 conv, resized bilinearly by
8, 4, 2, 1 (strides 16 -> 2, 4, 8, 16), then refined by a 3x3 conv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SCALE_FACTORS = (8, 4, 2, 1)


class TokenPyramidAdaptation(nn.Module):
    """Four (B, C, h, w) maps -> four (B, D, h*8, w*8), ..., (B, D, h, w) maps.

    With ``resample=False`` (the ``no_tpa`` ablation) every level stays at stride 16.
    """

    def __init__(self, in_dim: int, dim: int, resample: bool = True):
        super().__init__()
        self.resample = resample
        self.projections = nn.ModuleList(nn.Conv2d(in_dim, dim, 1, bias=False) for _ in SCALE_FACTORS)
        self.refine = nn.ModuleList(nn.Conv2d(dim, dim, 3, padding=1, bias=False) for _ in SCALE_FACTORS)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        pyramid = []
        for proj, conv, factor, x in zip(self.projections, self.refine, SCALE_FACTORS, maps):
            x = proj(x)
            if self.resample and factor != 1:
                h, w = x.shape[-2:]
                x = F.interpolate(x, size=(h * factor, w * factor), mode="bilinear", align_corners=False)
            pyramid.append(conv(x))
        return pyramid
