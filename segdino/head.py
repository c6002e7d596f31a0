"""Segmentation head: a 1x1 conv to ``num_classes`` logits, resized to the input size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationHead(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, D, h, w) -> (B, num_classes, *size) logits."""
        x = self.conv(x)
        if x.shape[-2:] != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x
