"""GroupNorm on a channels-last map without leaving its memory order.

``nn.GroupNorm`` views (B, C, H, W) as (B, G, C/G * H * W): on channels-last memory that view is a
permutation, and under ``torch.compile`` the statistics and (in training) the backward's reductions
read the map through it. Here the map is viewed as (B, H * W, G, C/G), which for channels-last
memory is its own order, and the statistics are reductions over axes 1 and 3 of that view. The same
function as the module (float32 statistics; float32 output under autocast, as the module gives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_norm_channels_last(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``norm(x)`` for (B, C, H, W) ``x``, computed on the (B, H*W, G, C/G) view (see the module doc)."""
    b, c, h, w = x.shape
    g = norm.num_groups
    stat = torch.promote_types(x.dtype, torch.float32)  # float32 statistics for 16-bit maps
    xv = x.permute(0, 2, 3, 1).reshape(b, h * w, g, c // g).to(stat)  # a view for channels-last x
    mean = xv.mean(dim=(1, 3), keepdim=True)
    centred = xv - mean
    var = (centred * centred).mean(dim=(1, 3), keepdim=True)
    y = (centred * torch.rsqrt(var + norm.eps)).reshape(b, h, w, c)
    if norm.affine:
        y = y * norm.weight.to(stat) + norm.bias.to(stat)
    out_dtype = stat if torch.is_autocast_enabled(x.device.type) else x.dtype
    return y.permute(0, 3, 1, 2).to(out_dtype)  # (B, C, H, W), channels-last strides


def residual_block_channels_last(x: torch.Tensor, block: nn.Module) -> torch.Tensor:
    """``block(x)`` for a :class:`segdino.sad.ResidualDepthwiseBlock` (or a sequence of them) with its
    GroupNorm as :func:`group_norm_channels_last`; other norms run the block itself."""
    if isinstance(block, nn.Sequential):
        for inner in block:
            x = residual_block_channels_last(x, inner)
        return x
    norm = getattr(block, "norm", None)
    if not isinstance(norm, nn.GroupNorm):
        return block(x)
    return x + block.gain * F.gelu(group_norm_channels_last(block.pointwise(block.depthwise(x)), norm))


__all__ = ["group_norm_channels_last", "residual_block_channels_last"]
