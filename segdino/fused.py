"""The SegDINO decoder rebuilt on :mod:`segdino.kernels`: the same parameters, the same function.

:func:`fuse_model` returns a copy of a model whose decoder runs

- TPA folded (:meth:`segdino.tpa.TokenPyramidAdaptation.fold` with ``channels_last=True``: the
  x8/x4/x2 resize and 3x3 conv done at 16x16 and expanded by two matrix products);
- SAD's top-down ``up(x) + l`` with the resize as two matrix products with fixed interpolation
  matrices (:func:`segdino.kernels.resize.resize_bilinear_matmul`, tensor cores; the add fuses into
  the neighbouring elementwise pass under ``torch.compile``), or as a one-pass Triton kernel
  (:func:`segdino.kernels.upsample_add`, ``resize="kernel"``); the head's resize as that kernel;
- on request, SAD's residual blocks with the depthwise conv, pointwise conv and GroupNorm statistics
  in one kernel (:func:`segdino.kernels.sad.residual_block`, two arrangements; the first measured
  slower than cuDNN + cuBLAS), or the whole block in two passes that never store the pre-norm map
  (``twopass``);
- the decoder's 1x1 convs as plain matrix products on the channels-last view
  (:mod:`segdino.kernels.pointwise`; ``pointwise="conv"`` keeps cuDNN's convs);
- the backbone's RoPE tables cached per input size (:mod:`segdino.kernels.rope`).

Each piece falls back to the reference computation where its kernel cannot run (no Triton, CPU,
uncovered shapes, gradients for the fused block), so the fused model runs anywhere.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .backbone import PATCH_SIZE
from .head import SegmentationHead
from .kernels import resize_bilinear, upsample_add
from .kernels.norm import residual_block_channels_last
from .kernels.pointwise import linear_pointwise_convs
from .kernels.resize import resize_bilinear_matmul
from .kernels.rope import CachedRope, cache_rope
from .kernels.sad import KERNELS as BLOCK_KERNELS, residual_block
from .sad import ScaleAwareDecoder
from .tpa import FoldedTokenPyramidAdaptation, TokenPyramidAdaptation


# Fused models have long named their TPA so; it is the folded TPA, arranged for channels-last maps.
FusedTokenPyramid = FoldedTokenPyramidAdaptation


def upsample_add_matmul(x: torch.Tensor, addend: torch.Tensor) -> torch.Tensor:
    """``resize(x, addend's size) + addend`` with the resize as matrix products."""
    if x.shape[-2:] == addend.shape[-2:]:
        return x + addend
    return resize_bilinear_matmul(x, addend.shape[-2:]) + addend


def _reference_block(x: torch.Tensor, block: nn.Module) -> torch.Tensor:
    return block(x)


# SAD's GroupNorm: the module's own (``module``), or computed on the channels-last view
# (``channels_last``, :mod:`segdino.kernels.norm`), the same function.
NORMS = ("module", "channels_last")


class FusedScaleAwareDecoder(nn.Module):
    """:class:`segdino.sad.ScaleAwareDecoder` with the top-down ``up(x) + l`` as matrix products or a
    one-pass kernel (``resize``: ``matmul`` or ``kernel``), optionally fused blocks (same parameters;
    ``fused_blocks``: False, or the kernel of :func:`segdino.kernels.sad.residual_block`, ``wide``
    (also ``True``), ``tiled`` or ``twopass``), and without fused blocks the GroupNorm of the
    blocks as the module (``norm="module"``) or on the channels-last view (``"channels_last"``,
    :func:`segdino.kernels.norm.residual_block_channels_last`)."""

    def __init__(self, sad: ScaleAwareDecoder, resize: str = "matmul", fused_blocks: bool | str = False,
                 norm: str = "module"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if resize not in ("matmul", "kernel"):
            raise ValueError(f"resize must be 'matmul' or 'kernel', got {resize!r}")
        if fused_blocks is True:
            fused_blocks = "wide"
        if fused_blocks and fused_blocks not in BLOCK_KERNELS:
            raise ValueError(f"fused_blocks must be False, True or one of {BLOCK_KERNELS}, got {fused_blocks!r}")
        self.refine = sad.refine
        if sad.refine:
            self.intra, self.inter = sad.intra, sad.inter
        self.resize, self.fused_blocks, self.norm = resize, fused_blocks, norm

    def forward(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        kernel = self.fused_blocks
        block = (lambda x, blk: residual_block(x, blk, kernel)) if kernel else _reference_block
        if not kernel and self.norm == "channels_last":
            block = residual_block_channels_last
        up_add = upsample_add if self.resize == "kernel" else upsample_add_matmul
        if self.refine:
            levels = [block(p, blk) for blk, p in zip(self.intra, pyramid)]
            x = block(levels[-1], self.inter[-1])
        else:
            levels = list(pyramid)
            x = levels[-1]
        for i in range(len(levels) - 2, -1, -1):
            x = up_add(x, levels[i])
            if self.refine:
                x = block(x, self.inter[i])
        return x


class FusedHead(nn.Module):
    """:class:`segdino.head.SegmentationHead` with the final resize as a one-pass kernel."""

    def __init__(self, head: SegmentationHead):
        super().__init__()
        self.conv = head.conv

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return resize_bilinear(self.conv(x), tuple(size))


POINTWISE = ("conv", "linear")


# What training runs (segdino.training.Trainer on the fused decoder): the options its step was
# measured with (docs/RESULTS.md, Speed). benchmarks/train_profile.py tries others through it.
TRAINING = {"pointwise": "linear"}


def fuse_model(model: nn.Module, rope_cache: bool = True, resize: str = "matmul",
               fused_blocks: bool | str = False, pointwise: str = "conv", norm: str = "module") -> nn.Module:
    """A copy of a SegDINO model with the fused decoder (and cached RoPE tables); same function.

    ``resize``, ``fused_blocks`` and ``norm`` (SAD's GroupNorm: ``module`` or ``channels_last``):
    see :class:`FusedScaleAwareDecoder`. ``pointwise``: the
    decoder's 1x1 convs (TPA projections, SAD's pointwise convs, the head's conv) as ``conv``
    (cuDNN) or ``linear``: one matrix product each on the channels-last view
    (:class:`segdino.kernels.pointwise.PointwiseLinear`, the same Parameters under the same names,
    so the state dict keeps the model's format). The defaults are the fastest measured on an H200
    for inference (docs/RESULTS.md, Speed): cuDNN's convs beat the GEMMs at batch 32 in both
    measurements (5.28 against 5.35 ms, 5.38 against 5.58 ms) and tie at batch 1. Training runs
    ``pointwise="linear"``, the form its 1,071 images/s step was measured with.

    Parts that are not the standard modules (e.g. BatchNorm blocks inside SAD) keep their reference
    path inside the fused modules.
    """
    if pointwise not in POINTWISE:
        raise ValueError(f"pointwise must be one of {POINTWISE}, got {pointwise!r}")
    fused = copy.deepcopy(model)
    if isinstance(getattr(fused, "tpa", None), TokenPyramidAdaptation):
        fused.tpa = fused.tpa.fold(channels_last=True)
    if isinstance(getattr(fused, "sad", None), ScaleAwareDecoder):
        fused.sad = FusedScaleAwareDecoder(fused.sad, resize=resize, fused_blocks=fused_blocks, norm=norm)
    if isinstance(getattr(fused, "head", None), SegmentationHead):
        fused.head = FusedHead(fused.head)
    if pointwise == "linear":
        for name in ("tpa", "sad", "head"):
            part = getattr(fused, name, None)
            if isinstance(part, nn.Module):
                linear_pointwise_convs(part)
    vit = getattr(getattr(fused, "backbone", None), "vit", None)
    if rope_cache and vit is not None:
        cache_rope(vit)
    return fused


def prime_rope(model: nn.Module, image_size: tuple[int, int], device: torch.device) -> None:
    """Compute the cached RoPE table for inputs of ``image_size`` (outside any compiled region)."""
    vit = getattr(getattr(model, "backbone", None), "vit", None)
    rope = getattr(vit, "rope", None)
    if isinstance(rope, CachedRope):
        rope.prime((image_size[0] // PATCH_SIZE, image_size[1] // PATCH_SIZE), device)
