"""TPA's "bilinear resize by f, then 3x3 conv" computed at low resolution, in channels-last order.

The same reformulation as :func:`segdino.export.upsample_conv3x3` (nine 1x1 convs on the small map,
then one interpolation product per axis, the conv's zero padding in the matrices), arranged so that
on a channels-last map both products are batched matrix products over contiguous memory and the
result comes out channels-last without a transposed copy of the large map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .resize import bilinear_matrix


def shifted_interpolation(n: int, factor: int) -> np.ndarray:
    """(factor*n, 3n): the resize-by-``factor`` rows read by a zero-padded 3-tap conv at offsets -1, 0, +1.

    Column ``d * n + j`` holds the weight of source ``j`` for tap ``d`` (0, 1, 2 for offsets -1, 0, +1).
    """
    a = bilinear_matrix(n, factor * n)
    zero = np.zeros((1, n))
    padded = np.concatenate([zero, a, zero])  # the conv's zero padding: rows -1 and factor*n read nothing
    return np.concatenate([padded[d : d + factor * n] for d in range(3)], axis=1)


def _shifted(n: int, factor: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(shifted_interpolation(n, factor)).to(device, dtype)


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
