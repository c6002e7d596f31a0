"""Bilinear resizes (PyTorch's rule, ``align_corners=False``), optionally fused with an addition.

``upsample_add(x, l)`` is SAD's top-down step ``resize(x, size of l) + l`` in one pass over ``l``:
each output pixel reads its four source pixels (all channels at once in channels-last memory),
adds ``l`` and is written once. Compiled, the same step is a gather kernel in float32 followed by
an add; eagerly, two passes. The backward is a matrix product per axis with the fixed
interpolation matrices (the transposed resize), not the scatter-add of the gather's backward.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .dispatch import kernels_enabled
from .tables import device_table


def _bilinear_rule(xp, out_idx, in_idx, n_in: int, n_out: int):
    """PyTorch's bilinear rule along one axis for numpy (``xp=np``) or torch arrays of float64 indices.

    Written once for both array kinds: the numpy matrix is what exporters record as a constant,
    the torch one is built on the device (or traced there by ``torch.compile``) without a host copy.
    """
    src = ((out_idx + 0.5) * (n_in / n_out) - 0.5).clip(min=0.0)
    i0 = (src // 1).clip(max=n_in - 1)
    frac = (src - i0)[:, None]
    i1 = (i0 + 1).clip(max=n_in - 1)
    cols = in_idx[None, :]
    return (cols == i0[:, None]) * (1.0 - frac) + (cols == i1[:, None]) * frac


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 matrix of PyTorch's bilinear resize along one axis (align_corners=False).

    PyTorch's rule with an output size given: scale ``n_in / n_out``, source ``s = (i + 0.5) * scale
    - 0.5`` clamped at 0, rows ``floor(s)`` and the next one (clamped at ``n_in - 1``) weighted
    ``1 - frac(s)`` and ``frac(s)``. Built with numpy and without loops, so that exporters record a
    constant.
    """
    return _bilinear_rule(np, np.arange(n_out, dtype=np.float64), np.arange(n_in, dtype=np.float64), n_in, n_out)


def bilinear_matrix_tensor(n_in: int, n_out: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """:func:`bilinear_matrix` as a float64 tensor built on ``device`` (no host-to-device copy)."""
    idx = lambda n: torch.arange(n, dtype=torch.float64, device=device)  # noqa: E731
    return _bilinear_rule(torch, idx(n_out), idx(n_in), n_in, n_out).to(torch.float64)


def _matrix(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return device_table(f"bilinear:{n_in}:{n_out}", lambda: bilinear_matrix(n_in, n_out),
                        lambda: bilinear_matrix_tensor(n_in, n_out, device), device, dtype)


def _channels_last_out(x: torch.Tensor, addend: Optional[torch.Tensor]) -> bool:
    ref = addend if addend is not None else x
    return ref.dim() == 4 and ref.is_contiguous(memory_format=torch.channels_last) and not ref.is_contiguous()


def _empty_out(x: torch.Tensor, size: list[int], addend: Optional[torch.Tensor]) -> torch.Tensor:
    fmt = torch.channels_last if _channels_last_out(x, addend) else torch.contiguous_format
    return torch.empty((x.shape[0], x.shape[1], size[0], size[1]), device=x.device, dtype=x.dtype,
                       memory_format=fmt)


def resize_bilinear_matmul(x: torch.Tensor, size: tuple[int, int] | list[int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear")`` as one matrix product per axis (tensor cores).

    Works in channels-last order, (B, h, w, C): the width product is batched over rows and the
    height product over images, neither needing a transposed copy. (B, C, h, w) -> (B, C, *size),
    channels-last.
    """
    b, c, h, w = x.shape
    hh, ww = int(size[0]), int(size[1])
    rows = _matrix(h, hh, x.device, x.dtype)  # (H, h)
    cols = _matrix(w, ww, x.device, x.dtype)  # (W, w)
    xp = x.permute(0, 2, 3, 1).reshape(b * h, w, c)
    t = torch.matmul(cols, xp)  # (B*h, W, C)
    y = torch.matmul(rows, t.reshape(b, h, ww * c))  # (B, H, W*C)
    return y.view(b, hh, ww, c).permute(0, 3, 1, 2)


def resize_bilinear_transposed(g: torch.Tensor, size: tuple[int, int] | list[int]) -> torch.Tensor:
    """The adjoint of the bilinear resize to ``g``'s size from ``size``: the gradient of its input.

    (B, C, H, W) -> (B, C, *size), computed as two matrix products (channels-last order).
    """
    b, c, hh, ww = g.shape
    h, w = int(size[0]), int(size[1])
    rows = _matrix(h, hh, g.device, g.dtype)  # (H, h)
    cols = _matrix(w, ww, g.device, g.dtype)  # (W, w)
    gp = g.permute(0, 2, 3, 1).reshape(b * hh, ww, c)
    t = torch.matmul(cols.t(), gp)  # (B*H, w, C)
    y = torch.matmul(rows.t(), t.reshape(b, hh, w * c))  # (B, h, w*C)
    return y.view(b, h, w, c).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------
# The operator


def _reference(x: torch.Tensor, size: list[int], addend: Optional[torch.Tensor]) -> torch.Tensor:
    y = x if list(x.shape[-2:]) == list(size) else F.interpolate(x, size=tuple(size), mode="bilinear",
                                                                align_corners=False)
    if addend is not None:
        y = y + addend
    fmt = torch.channels_last if _channels_last_out(x, addend) else torch.contiguous_format
    return y.contiguous(memory_format=fmt)


def _covered(x: torch.Tensor, addend: Optional[torch.Tensor]) -> bool:
    """Shapes and dtypes the Triton kernel handles (any 4-D float map; the addend of the output's shape)."""
    # float64 stays with PyTorch: the kernel computes in float32, like PyTorch's own float kernels.
    if x.dim() != 4 or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    if addend is not None and (addend.dtype != x.dtype or addend.device != x.device):
        return False
    return x.numel() < 2**31 and (addend is None or addend.numel() < 2**31)


@torch.library.custom_op("segdino::bilinear_add", mutates_args=())
def bilinear_add(x: torch.Tensor, size: list[int], addend: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``resize_bilinear(x, size) + addend`` (addend optional), one pass; see :func:`upsample_add`."""
    if addend is not None and list(addend.shape) != [x.shape[0], x.shape[1], size[0], size[1]]:
        raise ValueError(f"addend of shape {tuple(addend.shape)} does not match the resized {tuple(x.shape[:2])} x {size}")
    if kernels_enabled(x) and _covered(x, addend):
        from .triton_kernels import bilinear_add_triton

        out = _empty_out(x, size, addend)
        bilinear_add_triton(x, addend, out)
        return out
    return _reference(x, size, addend)


@bilinear_add.register_fake
def _(x, size, addend=None):
    return _empty_out(x, size, addend)


def _backward(ctx, grad):
    gx = resize_bilinear_transposed(grad, ctx.in_size).to(ctx.x_dtype)
    return gx, None, (grad if ctx.has_addend else None)


def _setup(ctx, inputs, output):
    x, size, addend = inputs
    ctx.in_size = list(x.shape[-2:])
    ctx.x_dtype = x.dtype
    ctx.has_addend = addend is not None


bilinear_add.register_autograd(_backward, setup_context=_setup)


def resize_bilinear(x: torch.Tensor, size: tuple[int, int] | list[int]) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) to (B, C, *size), ``align_corners=False``; no-op when equal."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return bilinear_add(x, [int(size[0]), int(size[1])], None)


def upsample_add(x: torch.Tensor, addend: torch.Tensor) -> torch.Tensor:
    """``resize_bilinear(x, addend's size) + addend``: (B, C, h, w), (B, C, H, W) -> (B, C, H, W)."""
    if x.shape[-2:] == addend.shape[-2:]:
        return x + addend
    return bilinear_add(x, [int(addend.shape[-2]), int(addend.shape[-1])], addend)
