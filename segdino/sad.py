"""SAD, Scale-Aware Decoding: intra-scale refinement, then top-down inter-scale fusion.

Each refinement is a residual depthwise block ``y = x + g * GELU(Norm(PW(DW(x))))`` whose gain
``g`` starts at 0, so every block begins as the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(min(32, dim), dim)
    if kind == "batch":
        return nn.BatchNorm2d(dim)
    raise ValueError(f"unknown norm {kind!r}")


class ResidualDepthwiseBlock(nn.Module):
    """``x + gain * GELU(Norm(pointwise(depthwise(x))))`` on (B, D, H, W)."""

    def __init__(self, dim: int, norm: str = "group"):
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.pointwise = nn.Conv2d(dim, dim, 1, bias=False)
        self.norm = make_norm(norm, dim)
        self.gain = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gain * F.gelu(self.norm(self.pointwise(self.depthwise(x))))


def upsample_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to the spatial size of ``ref`` (no-op when equal)."""
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def _refinement(dim: int, norm: str, blocks: int) -> nn.Module:
    """One refinement step of SAD: a residual block, or ``blocks`` of them in sequence."""
    if blocks == 1:
        return ResidualDepthwiseBlock(dim, norm)
    return nn.Sequential(*(ResidualDepthwiseBlock(dim, norm) for _ in range(blocks)))


class ScaleAwareDecoder(nn.Module):
    """Refines four pyramid levels (finest first) and fuses them top-down.

    ``l_i = intra_i(p_i)``; ``x4 = inter_4(l4)``; ``x_i = inter_i(up(x_{i+1}) + l_i)``.
    With ``refine=False`` (the ``no_sad`` ablation) both block sets are dropped and the levels
    are merged by resize-and-add alone. ``blocks`` > 1 makes every ``intra_i`` and ``inter_i`` that
    many residual blocks in a row (more decoder capacity at the same scales); with 1 each is a
    single block, as in the paper, and the parameter names stay those of the paper's layout.
    Returns ``x1``, the finest fused map.
    """

    def __init__(self, dim: int, norm: str = "group", levels: int = 4, refine: bool = True, blocks: int = 1):
        super().__init__()
        self.refine = refine
        if refine:
            self.intra = nn.ModuleList(_refinement(dim, norm, blocks) for _ in range(levels))
            self.inter = nn.ModuleList(_refinement(dim, norm, blocks) for _ in range(levels))

    def forward(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        if self.refine:
            levels = [blk(p) for blk, p in zip(self.intra, pyramid)]
        else:
            levels = list(pyramid)
        x = levels[-1]
        if self.refine:
            x = self.inter[-1](x)
        for i in range(len(levels) - 2, -1, -1):
            x = upsample_to(x, levels[i]) + levels[i]
            if self.refine:
                x = self.inter[i](x)
        return x
