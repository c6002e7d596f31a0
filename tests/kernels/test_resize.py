"""Bilinear resizes as matrix products and the fused resize + add equal PyTorch's, forward and backward."""

import pytest
import torch
import torch.nn.functional as F

from segdino.kernels import upsample_add
from segdino.kernels.resize import (
    _reference,
    bilinear_add,
    bilinear_matrix,
    resize_bilinear,
    resize_bilinear_matmul,
    resize_bilinear_transposed,
)
from tests.kernels.conftest import SIZES, rel


@pytest.mark.parametrize("h,w,hh,ww", SIZES)
def test_matrix_resizes_are_pytorchs_bilinear(h, w, hh, ww):
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    ref = F.interpolate(x, size=(hh, ww), mode="bilinear", align_corners=False)
    rows = torch.from_numpy(bilinear_matrix(h, hh))
    assert rel(torch.einsum("Hh,bchw->bcHw", rows, x), F.interpolate(x, size=(hh, w), mode="bilinear")) < 1e-14
    y = resize_bilinear_matmul(x, (hh, ww))
    assert y.is_contiguous(memory_format=torch.channels_last) and rel(y, ref) < 1e-14
    # The transposed resize is the gradient of the resize's input.
    g = torch.randn_like(ref)
    xr = x.clone().requires_grad_()
    F.interpolate(xr, size=(hh, ww), mode="bilinear", align_corners=False).backward(g)
    assert rel(resize_bilinear_transposed(g, (h, w)), xr.grad) < 1e-13


def test_bilinear_add_fallback_forward_and_gradcheck():
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    l = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    ref = F.interpolate(x, size=(6, 7), mode="bilinear", align_corners=False) + l
    assert rel(upsample_add(x, l), ref) < 1e-15
    assert torch.autograd.gradcheck(upsample_add, (x, l))
    assert torch.autograd.gradcheck(lambda t: resize_bilinear(t, (5, 9)), (x,))
    assert resize_bilinear(x, (3, 4)) is x
    with pytest.raises(ValueError, match="does not match"):
        bilinear_add(x, [6, 8], l)


def test_triton_bilinear_add_equals_reference(interpret, monkeypatch):
    calls = []
    import segdino.kernels.triton_kernels as tk

    real = tk.bilinear_add_triton
    monkeypatch.setattr(tk, "bilinear_add_triton", lambda *a: (calls.append(1), real(*a))[1])
    for h, w, hh, ww in SIZES[:3]:
        x = torch.randn(2, 5, h, w)
        l = torch.randn(2, 5, hh, ww)
        ref = F.interpolate(x, size=(hh, ww), mode="bilinear", align_corners=False) + l
        y = upsample_add(x, l)
        assert rel(y, ref) < 1e-6 and y.is_contiguous()
        cl = torch.channels_last
        y = upsample_add(x.contiguous(memory_format=cl), l.contiguous(memory_format=cl))
        assert rel(y, ref) < 1e-6 and y.is_contiguous(memory_format=cl)
        assert rel(resize_bilinear(x, (hh, ww)), ref - l) < 1e-6
    assert len(calls) == 9
    # The gradient goes through the transposed resize, the same as PyTorch's.
    xg = torch.randn(1, 4, 3, 3, requires_grad=True)
    lg = torch.randn(1, 4, 6, 6, requires_grad=True)
    upsample_add(xg, lg).square().sum().backward()
    xr, lr = xg.detach().clone().requires_grad_(), lg.detach().clone().requires_grad_()
    _reference(xr, [6, 6], lr).square().sum().backward()
    assert rel(xg.grad, xr.grad) < 1e-5 and rel(lg.grad, lr.grad) < 1e-5

