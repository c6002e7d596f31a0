"""The fused SAD residual block equals the module (Triton, under the interpreter), and falls back to it."""

import pytest
import torch

from segdino.kernels.sad import residual_block
from segdino.sad import ResidualDepthwiseBlock
from tests.conftest import randomize_
from tests.kernels.conftest import rel


@pytest.mark.parametrize("dim,h,w", [(32, 5, 6), (64, 3, 20)])
def test_triton_fused_sad_block_equals_module(interpret, monkeypatch, dim, h, w):
    import segdino.kernels.sad as sad_kernels

    blk = randomize_(ResidualDepthwiseBlock(dim), seed=dim)
    x = (torch.randn(2, dim, h, w) + 0.5).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = blk(x)
        calls = []
        real = sad_kernels.dw_pw_stats
        monkeypatch.setattr(sad_kernels, "dw_pw_stats", lambda *a: (calls.append(1), real(*a))[1])
        y = residual_block(x, blk)
    assert calls and rel(y, ref) < 1e-5
    # Gradients, BatchNorm and uncovered layouts take the module itself.
    calls.clear()
    xg = x.clone().requires_grad_()
    residual_block(xg, blk).sum().backward()
    with torch.no_grad():
        residual_block(x.contiguous(), blk)
        bn = ResidualDepthwiseBlock(dim, norm="batch").eval()
        assert torch.equal(residual_block(x, bn), bn(x))
    assert not calls and xg.grad is not None

