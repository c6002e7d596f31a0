"""SAD's residual depthwise block ``x + g * GELU(GroupNorm(PW(DW(x))))`` with its first half fused.

One kernel reads ``x`` once (its 3x3 neighbourhood from cache), computes the depthwise conv a few
channels at a time straight into the pointwise matrix product (tensor cores), writes the result
``t`` and, per tile, the GroupNorm sums; the statistics are combined exactly (Chan's formula for
the centred sums of squares), and normalisation, GELU, gain and residual are one elementwise pass
that ``torch.compile`` fuses. The depthwise output, a full-size map, never reaches memory.

Two arrangements: ``wide``, one program per 64-pixel tile holding all C output channels (measured
on an H200 at ~5% of its memory floor, slower than cuDNN's depthwise conv + cuBLAS's pointwise
product under ``torch.compile``, docs/RESULTS.md, Speed), and ``tiled``, the output channels split
over programs with a (64 pixels, 64 channels) accumulator each, the programs of one pixel tile
launched together so that they read its input from cache. Both are off by default
(``fuse_model(..., fused_blocks="wide" | "tiled")``).

A third, ``twopass`` (:func:`residual_block_twopass`), does the whole block without storing the
pre-norm map: one pass for the GroupNorm statistics, one that recomputes the map and writes the
block's output (3 passes over the map instead of 8 for the unfused chain).

Inference only (no backward): training uses the reference module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import kernels_enabled

TILE = 64  # pixels of one row per program


def _tile(width: int) -> int:
    return min(TILE, max(16, 1 << (int(width) - 1).bit_length()))


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def fused_block_covers(x: torch.Tensor, channels: int, groups: int) -> bool:
    """Shapes the fused kernel handles: channels-last (B, C, H, W), C a power of two in 16..256,
    groups dividing it into power-of-two sizes, a 16-bit float dtype (or float32 when interpreting)."""
    if x.dim() != 4 or x.shape[1] != channels or not _pow2(channels) or not 16 <= channels <= 256:
        return False
    if groups < 1 or channels % groups or not _pow2(channels // groups):
        return False
    if not x.is_contiguous(memory_format=torch.channels_last):
        return False
    allowed = (torch.bfloat16, torch.float16) if x.is_cuda else (torch.float32,)
    return x.dtype in allowed and x.numel() < 2**31


KERNELS = ("wide", "tiled", "twopass", "twopass_dw")

# The two-pass kernel's tile on a GPU: BM pixels x BN output channels, BK input channels per step
# (BN and BK capped at C, BN raised to one whole group where groups are wider).
# The fastest of a sweep on an H200 (docs/RESULTS.md, Speed); wider BK or more stages exceed its
# 227 KB of shared memory, since Triton stages each of the nine depthwise taps' loads.
TWOPASS = {"BM": 64, "BN": 256, "BK": 32, "num_warps": 4, "num_stages": 2}
# After a cuDNN depthwise pass (``twopass_dw``) the loop is a plain matrix product: predicted tile,
# not yet measured.
TWOPASS_DW = {"BM": 128, "BN": 256, "BK": 64, "num_warps": 8, "num_stages": 3}


def twopass_config(channels: int, group_size: int, config: dict | None = None,
                   given_depthwise: bool = False) -> dict:
    """The two-pass kernel's launch configuration for ``channels``: ``TWOPASS`` (``TWOPASS_DW`` with
    ``given_depthwise``) updated by ``config``."""
    cfg = {**(TWOPASS_DW if given_depthwise else TWOPASS), **(config or {})}
    cfg["BN"] = min(channels, max(cfg["BN"], group_size))
    cfg["BK"] = min(channels, cfg["BK"])
    return cfg


def _block_n(channels: int, group_size: int) -> int:
    """Output channels per program of the tiled kernel: 64, or one whole group where groups are wider."""
    return min(channels, max(64, group_size))


@torch.library.custom_op("segdino::dw_pw_stats", mutates_args=())
def dw_pw_stats(x: torch.Tensor, dw: torch.Tensor, pw: torch.Tensor, groups: int,
                tiled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) channels-last -> ``t = PW(DW(x))`` (same layout) and partials (B, H, tiles, G, 2)
    holding each tile's per-group sum and centred sum of squares.

    ``tiled``: the kernel that splits the output channels over programs (a (64 pixels, 64 channels)
    accumulator each) instead of one program per pixel tile holding all C channels.
    """
    from .triton_kernels import dw_pw_stats_tiled_triton, dw_pw_stats_triton

    b, c, h, w = x.shape
    tile = _tile(w)
    t = torch.empty_like(x, memory_format=torch.channels_last)
    stats = torch.empty((b, h, -(-w // tile), groups, 2), device=x.device, dtype=torch.float32)
    dw9, pw_t = dw.reshape(c, 9).contiguous(), pw.reshape(c, c).t().contiguous()
    if tiled:
        dw_pw_stats_tiled_triton(x, dw9, pw_t, t, stats, c // groups, tile, _block_n(c, c // groups), min(c, 64))
    else:
        dw_pw_stats_triton(x, dw9, pw_t, t, stats, c // groups, tile)
    return t, stats


@dw_pw_stats.register_fake
def _(x, dw, pw, groups, tiled=False):
    b, c, h, w = x.shape
    tile = _tile(w)
    t = torch.empty_like(x, memory_format=torch.channels_last)
    return t, x.new_empty((b, h, -(-w // tile), groups, 2), dtype=torch.float32)


def combine_stats(stats: torch.Tensor, width: int, group_size: int,
                  tile: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tile (sum, centred sum of squares) (B, H, T, G, 2) -> per-group mean and variance (B, G).

    Rows of ``width`` pixels in tiles of ``tile`` (default: the one-pass kernels' tile for that
    width). Chan's parallel formula: ``M2 = sum M2_t + sum n_t (mean_t - mean)^2``, exact up to
    rounding.
    """
    b, h, n_tiles, g, _ = stats.shape
    tile = _tile(width) if tile is None else tile
    n_t = torch.full((n_tiles,), float(tile * group_size), device=stats.device)
    n_t[-1] = float((width - tile * (n_tiles - 1)) * group_size)
    s, m2 = stats[..., 0], stats[..., 1]
    n_t = n_t.view(1, 1, n_tiles, 1)
    total = n_t.sum() * h
    mean = s.sum(dim=(1, 2)) / total  # (B, G)
    mean_t = s / n_t
    m2 = m2.sum(dim=(1, 2)) + (n_t * (mean_t - mean[:, None, None, :]) ** 2).sum(dim=(1, 2))
    return mean, m2 / total


@torch.library.custom_op("segdino::residual_block_twopass", mutates_args=())
def residual_block_twopass(x: torch.Tensor, dw: torch.Tensor, pw: torch.Tensor, gamma: torch.Tensor,
                           beta: torch.Tensor, gain: torch.Tensor, groups: int, eps: float,
                           given_depthwise: bool = False) -> torch.Tensor:
    """``x + gain * GELU(GroupNorm(PW(DW(x))))`` in two passes over a contiguous channels-last ``x``.

    The first pass computes the pre-norm map tile by tile and keeps only each tile's GroupNorm
    partials; the second recomputes it (the same arithmetic, so the same values) and writes the
    block's output. Three passes over the map in all (read, read, write) instead of the eight of the
    unfused chain; the pointwise product runs twice (cheap against the memory traffic saved).
    ``gamma``/``beta``: the norm's affine parameters (ones and zeros without); ``gain``: (1,).

    ``given_depthwise``: the depthwise conv runs first as its own (cuDNN) pass, writing its output
    once, and both passes are plain matrix products over it, with the statistics or the whole
    rest of the block in their epilogue: six passes over the map instead of three, but no
    nine-tap stencil inside the matrix product's loop.
    """
    from .triton_kernels import block_pass_triton

    b, c, h, w = x.shape
    gs = c // groups
    cfg = twopass_config(c, gs, given_depthwise=given_depthwise)
    n_tiles = -(-(h * w) // cfg["BM"])
    dw9 = dw.reshape(c, 9).float().contiguous()
    pw_t = pw.reshape(c, c).t().to(x.dtype).contiguous()
    gamma, beta = gamma.float().contiguous(), beta.float().contiguous()
    d = None
    if given_depthwise:
        d = F.conv2d(x, dw.reshape(c, 1, 3, 3).to(x.dtype), padding=1, groups=c)
        d = d.contiguous(memory_format=torch.channels_last)
    stats = torch.empty((b, n_tiles, groups, 2), device=x.device, dtype=torch.float32)
    block_pass_triton(x, dw9, pw_t, stats, stats, gamma, beta, gain, None, gs, cfg, d)
    mean, var = combine_stats(stats[:, None], h * w, gs, tile=cfg["BM"])
    mean_rstd = torch.stack((mean, torch.rsqrt(var + eps)), dim=-1).contiguous()
    out = torch.empty_like(x, memory_format=torch.channels_last)
    block_pass_triton(x, dw9, pw_t, stats, mean_rstd, gamma, beta, gain, out, gs, cfg, d)
    return out


@residual_block_twopass.register_fake
def _(x, dw, pw, gamma, beta, gain, groups, eps, given_depthwise=False):
    return torch.empty_like(x, memory_format=torch.channels_last)


def _twopass(x: torch.Tensor, block: torch.nn.Module, given_depthwise: bool = False) -> torch.Tensor:
    norm = block.norm
    c = x.shape[1]
    if norm.affine:
        gamma, beta = norm.weight, norm.bias
    else:
        gamma, beta = x.new_ones(c, dtype=torch.float32), x.new_zeros(c, dtype=torch.float32)
    return residual_block_twopass(x, block.depthwise.weight, block.pointwise.weight, gamma, beta,
                                  block.gain, norm.num_groups, float(norm.eps), given_depthwise)


def residual_block(x: torch.Tensor, block: torch.nn.Module, kernel: str = "wide") -> torch.Tensor:
    """``block(x)`` for a :class:`segdino.sad.ResidualDepthwiseBlock`; fused where the kernel covers it.

    (B, D, H, W) -> (B, D, H, W). ``kernel``: ``wide`` (one program per pixel tile, all channels)
    or ``tiled`` (output channels split over programs; see :func:`dw_pw_stats`), which write the
    pre-norm map and leave the rest to one elementwise pass, or ``twopass``
    (:func:`residual_block_twopass`: the whole block, the pre-norm map never stored) and
    ``twopass_dw`` (the same after a cuDNN depthwise pass). Falls back to the
    module itself for BatchNorm, gradients, CPU tensors (outside the interpreter), and shapes the
    kernel does not cover.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if isinstance(block, torch.nn.Sequential):  # several blocks per step (``sad_blocks``): each in turn
        for inner in block:
            x = residual_block(x, inner, kernel)
        return x
    norm = getattr(block, "norm", None)
    c = x.shape[1]
    if (not isinstance(norm, torch.nn.GroupNorm) or (torch.is_grad_enabled() and x.requires_grad)
            or not kernels_enabled(x) or not fused_block_covers(x, c, norm.num_groups)):
        return block(x)
    g = norm.num_groups
    if kernel in ("twopass", "twopass_dw"):
        return _twopass(x, block, kernel == "twopass_dw")
    t, stats = dw_pw_stats(x, block.depthwise.weight, block.pointwise.weight, g, kernel == "tiled")
    mean, var = combine_stats(stats, x.shape[-1], c // g)
    rstd = torch.rsqrt(var + norm.eps)  # (B, G)
    scale = rstd.repeat_interleave(c // g, dim=1)  # (B, C)
    shift = -mean.repeat_interleave(c // g, dim=1) * scale
    if norm.affine:
        scale = scale * norm.weight.float()
        shift = shift * norm.weight.float() + norm.bias.float()
    z = t.float() * scale[:, :, None, None] + shift[:, :, None, None]
    return x + (block.gain * F.gelu(z)).to(x.dtype)
