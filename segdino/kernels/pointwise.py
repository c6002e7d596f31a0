"""1x1 convolutions as plain matrix products on the channels-last view.

A 1x1 conv over a channels-last (B, C, H, W) map is a (B*H*W, C) x (C, O) matrix product on memory
that is already laid out as those rows. ``F.linear`` on the (B, H, W, C) permuted view runs it as
one cuBLAS GEMM and returns (B, H, W, O) rows, which permuted back are a channels-last map again:
no copy on either side. cuDNN's own kernel for the same 1x1 conv measured several times slower on
an H200 (docs/RESULTS.md, Speed).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def pointwise_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` for a 1x1 ``weight`` (O, C, 1, 1), as one matrix product.

    (B, C, H, W) -> (B, O, H, W), channels-last. On a channels-last ``x`` no copy is made; other
    layouts work too (the product then gathers its rows first).
    """
    return F.linear(x.permute(0, 2, 3, 1), weight[:, :, 0, 0], bias).permute(0, 3, 1, 2)


def is_pointwise(conv: nn.Module) -> bool:
    """True for a plain 1x1 ``nn.Conv2d`` (stride 1, no padding, no dilation, no groups)."""
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding in ((0, 0), "valid") and conv.dilation == (1, 1) and conv.groups == 1)


class PointwiseLinear(nn.Module):
    """Stands in for a 1x1 ``nn.Conv2d``, computing it with :func:`pointwise_linear`.

    Holds the conv's own ``weight`` (O, C, 1, 1) and ``bias`` Parameters (the same objects, under the
    same names), so state dicts and checkpoints keep the conv's format and gradients reach them.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not is_pointwise(conv):
            raise ValueError(f"not a plain 1x1 conv: {conv}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.weight = conv.weight
        self.bias = conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise_linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, bias={self.bias is not None}"


def linear_pointwise_convs(module: nn.Module) -> int:
    """Replace every plain 1x1 conv inside ``module`` by a :class:`PointwiseLinear` (in place).

    Returns how many were replaced.
    """
    n = 0
    for name, child in list(module.named_children()):
        if is_pointwise(child):
            setattr(module, name, PointwiseLinear(child))
            n += 1
        else:
            n += linear_pointwise_convs(child)
    return n
