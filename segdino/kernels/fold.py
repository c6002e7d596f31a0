"""TPA's "bilinear resize by f, then 3x3 conv" computed at low resolution: the exact fold of
:meth:`segdino.tpa.TokenPyramidAdaptation.fold`, with ~25 GFLOP fewer per 256x256 image.

Both operations are linear and the resize is separable: nine 1x1 convs on the small map, then one
interpolation product per axis, the conv's zero padding in the matrices. :func:`upsample_conv3x3`
works on contiguous (NCHW) maps and exports to ONNX as plain matrix products;
:func:`upsample_conv3x3_cl` arranges the same products so that on a channels-last map both are
batched matrix products over contiguous memory and the result comes out channels-last without a
transposed copy of the large map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .resize import bilinear_matrix, bilinear_matrix_tensor
from .tables import device_table


def _shift_taps(xp, a):
    """(m, n) resize rows -> (m, 3n): the rows a zero-padded 3-tap conv reads at offsets -1, 0, +1
    (numpy or torch arrays, ``xp`` their module)."""
    zero = a[:1] * 0.0
    padded = xp.concatenate([zero, a, zero])  # the conv's zero padding: rows -1 and m read nothing
    return xp.concatenate([padded[d : d + a.shape[0]] for d in range(3)], axis=1)


def shifted_interpolation(n: int, factor: int) -> np.ndarray:
    """(factor*n, 3n): the resize-by-``factor`` rows read by a zero-padded 3-tap conv at offsets -1, 0, +1.

    Column ``d * n + j`` holds the weight of source ``j`` for tap ``d`` (0, 1, 2 for offsets -1, 0, +1).
    """
    return _shift_taps(np, bilinear_matrix(n, factor * n))


def interpolation_matrix(n: int, factor: int) -> np.ndarray:
    """(factor*n, n) float64 matrix of PyTorch's bilinear resize by ``factor`` (align_corners=False).

    See :func:`segdino.kernels.resize.bilinear_matrix`, which holds the rule for any sizes.
    """
    return bilinear_matrix(n, factor * n)


def _shifted(n: int, factor: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return device_table(f"shifted:{n}:{factor}", lambda: shifted_interpolation(n, factor),
                        lambda: _shift_taps(torch, bilinear_matrix_tensor(n, factor * n, device)), device, dtype)


def upsample_conv3x3(x: torch.Tensor, weight: torch.Tensor, factor: int) -> torch.Tensor:
    """``conv3x3(bilinear_resize(x, factor), weight)`` (padding 1, no bias), computed at low resolution.

    Both operations are linear and the resize is separable, so
    ``y = sum_{dy,dx} S_dy A (W[:, :, dy, dx] x) B^T S_dx^T`` with ``A``, ``B`` the row and column
    interpolation matrices and ``S`` the conv's shifts: nine 1x1 convs on the small map, then one
    matrix product per axis. For TPA's x8 level at 256x256 and D=256 that is ~0.9 GFLOP instead of
    19.3, and the resized map is never stored.

    Args:
        x: (B, D, h, w). weight: (O, D, 3, 3).

    Returns:
        (B, O, factor*h, factor*w), equal to the direct computation up to float rounding.
    """
    b, d, h, w = x.shape
    o = weight.shape[0]
    rows = _shifted(int(h), factor, x.device, x.dtype)  # (fh, 3h)
    cols = _shifted(int(w), factor, x.device, x.dtype).T.contiguous()  # (3w, fw)
    # q[:, dy, dx] = W[:, :, dy, dx] x
    q = F.conv2d(x, weight.permute(2, 3, 0, 1).reshape(9 * o, d, 1, 1)).view(b, 3, 3, o, h, w)
    # columns: r[:, dy] = sum_dx q[:, dy, dx] B_dx^T   -> (B, 3, O, h, fw)
    r = torch.matmul(q.permute(0, 1, 3, 4, 2, 5).reshape(b, 3, o, h, 3 * w), cols)
    # rows: y = sum_dy A_dy r[:, dy]   -> (B, O, fh, fw)
    return torch.matmul(rows, r.permute(0, 2, 1, 3, 4).reshape(b, o, 3 * h, factor * w))


def upsample_conv3x3_cl(x: torch.Tensor, weight: torch.Tensor, factor: int) -> torch.Tensor:
    """``conv3x3(bilinear_resize(x, factor), weight)`` (padding 1, no bias), computed at low resolution.

    Args:
        x: (B, D, h, w), best channels-last. weight: (O, D, 3, 3).

    Returns:
        (B, O, factor*h, factor*w), channels-last; equal to the direct computation up to rounding.
    """
    b, _, h, w = x.shape
    o = weight.shape[0]
    fh, fw = factor * h, factor * w
    rows = _shifted(int(h), factor, x.device, x.dtype)  # (fh, 3h)
    cols = _shifted(int(w), factor, x.device, x.dtype)  # (fw, 3w)
    # q[b, i, j, dy, dx, o] = (W[:, :, dy, dx] x)[b, o, i, j]
    q = F.conv2d(x, weight.permute(2, 3, 0, 1).reshape(9 * o, -1, 1, 1))
    q = q.permute(0, 2, 3, 1).reshape(b, h, w, 3, 3, o).permute(0, 3, 1, 4, 2, 5)  # (B, dy, h, dx, w, O)
    r = torch.matmul(cols, q.reshape(b, 3, h, 3 * w, o))  # (B, dy, h, fw, O): the column product
    y = torch.matmul(rows, r.reshape(b, 3 * h, fw * o))  # (B, fh, fw*O): the row product
    return y.view(b, fh, fw, o).permute(0, 3, 1, 2)
