"""TPA's resize + 3x3 conv computed at low resolution equals the direct computation, in both
arrangements (contiguous and channels-last), and its interpolation matrices are PyTorch's rule."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segdino.kernels.fold import interpolation_matrix, upsample_conv3x3, upsample_conv3x3_cl
from tests.kernels.conftest import rel


@pytest.mark.parametrize("h,w,factor", [(16, 16, 8), (3, 5, 4), (1, 1, 2), (2, 7, 8)])
def test_folded_upsample_conv_is_resize_then_conv(h, w, factor):
    g = torch.Generator().manual_seed(h * 100 + w)
    x = torch.randn(2, 6, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(4, 6, 3, 3, generator=g, dtype=torch.float64)
    up = torch.nn.functional.interpolate(x, size=(h * factor, w * factor), mode="bilinear", align_corners=False)
    direct = torch.nn.functional.conv2d(up, weight, padding=1)
    assert rel(upsample_conv3x3(x, weight, factor), direct) < 1e-13


@pytest.mark.parametrize("n,factor", [(1, 2), (5, 4), (16, 8), (7, 3)])
def test_interpolation_matrix_is_pytorchs_bilinear_rule(n, factor):
    eye = torch.eye(n, dtype=torch.float64)[None, None]
    expected = torch.nn.functional.interpolate(eye, size=(factor * n, n), mode="bilinear", align_corners=False)[0, 0]
    assert np.abs(interpolation_matrix(n, factor) - expected.numpy()).max() < 1e-15


def test_folded_tpa_channels_last_equals_direct_and_backward():
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64)
    weight = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    for factor in (2, 4, 8):
        up = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        direct = F.conv2d(up, weight, padding=1)
        y = upsample_conv3x3_cl(x.contiguous(memory_format=torch.channels_last), weight, factor)
        assert rel(y, direct) < 1e-13 and y.is_contiguous(memory_format=torch.channels_last)
    xs = torch.randn(1, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    ws = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: upsample_conv3x3_cl(a, b, 4), (xs, ws))

