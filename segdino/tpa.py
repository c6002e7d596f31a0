"""TPA, Token Pyramid Adaptation: four same-stride token maps -> a pseudo multi-scale pyramid.

Tap i (shallow to deep) is projected to the decoder width by a 1x1 conv, resized bilinearly by
8, 4, 2, 1 (strides 16 -> 2, 4, 8, 16), then refined by a 3x3 conv.

For inference, :meth:`TokenPyramidAdaptation.fold` returns the same function with each "resize,
then 3x3 conv" computed at the low resolution (:mod:`segdino.kernels.fold`), the way timm's
re-parameterisable blocks fold themselves for deployment.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kernels.fold import upsample_conv3x3, upsample_conv3x3_cl

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
                x = _upsample(x, factor)
            pyramid.append(conv(x))
        return pyramid

    def fold(self, channels_last: bool = False) -> "FoldedTokenPyramidAdaptation":
        """The same function with every "resize by 8/4/2, then 3x3 conv" folded into low-resolution products.

        The folded module shares this module's projections and refine convs (same parameters,
        same state-dict keys). ``channels_last`` picks the arrangement of the products that suits
        channels-last maps on a GPU (:func:`segdino.kernels.fold.upsample_conv3x3_cl`); the default
        suits contiguous maps and exports to ONNX.
        """
        return FoldedTokenPyramidAdaptation(self, channels_last=channels_last)


class FoldedTokenPyramidAdaptation(nn.Module):
    """:class:`TokenPyramidAdaptation` with each resize + 3x3 conv computed at low resolution.

    Built by :meth:`TokenPyramidAdaptation.fold`. A refine conv that is not a plain 3x3 conv
    (stride 1, padding 1, no groups) keeps the direct computation, so any TPA folds safely.
    """

    def __init__(self, tpa: TokenPyramidAdaptation, channels_last: bool = False):
        super().__init__()
        self.resample = tpa.resample
        self.projections = tpa.projections
        self.refine = tpa.refine
        self.channels_last = channels_last
        self.factors = SCALE_FACTORS

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        upsample_conv = upsample_conv3x3_cl if self.channels_last else upsample_conv3x3
        pyramid = []
        for proj, conv, factor, x in zip(self.projections, self.refine, self.factors, maps):
            x = proj(x)
            if self.resample and factor != 1 and _foldable(conv):
                y = upsample_conv(x, conv.weight, factor)
                if conv.bias is not None:
                    y = y + conv.bias.view(1, -1, 1, 1)
            else:
                if self.resample and factor != 1:
                    x = _upsample(x, factor)
                y = conv(x)
            pyramid.append(y)
        return pyramid


def _upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    return F.interpolate(x, size=(h * factor, w * factor), mode="bilinear", align_corners=False)


def _foldable(conv: nn.Module) -> bool:
    """True for the plain 3x3 conv the fold is exact for."""
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")
