"""The fused SAD residual block equals the module (Triton, under the interpreter), and falls back to it."""

import pytest
import torch

from segdino.kernels.sad import residual_block
from segdino.sad import ResidualDepthwiseBlock
from tests.conftest import randomize_
from tests.kernels.conftest import rel


# (kernel, channels, height, width, GroupNorm groups): partial pixel tiles (width 20 in tiles of
# 32), several output-channel tiles (128 channels in tiles of 64), groups wider than 64 channels.
CASES = [("wide", 32, 5, 6, 32), ("wide", 64, 3, 20, 32), ("tiled", 32, 5, 6, 32),
         ("tiled", 128, 3, 20, 32), ("tiled", 128, 2, 5, 1)]
# The two-pass kernel: tiles of 128 pixels wrapping rows and a partial last tile (12x20), several
# input-channel steps and output-channel tiles (256 channels in steps of 64, tiles of 128), one
# group wider than a tile (raised to the group), groups of 4 channels.
TWOPASS_CASES = [(32, 5, 6, 32), (256, 12, 20, 32), (128, 2, 5, 1), (16, 9, 15, 4)]


@pytest.mark.parametrize("kernel,dim,h,w,groups", CASES)
def test_triton_fused_sad_block_equals_module(interpret, monkeypatch, kernel, dim, h, w, groups):
    import segdino.kernels.sad as sad_kernels

    blk = randomize_(ResidualDepthwiseBlock(dim), seed=dim)
    if groups != blk.norm.num_groups:
        blk.norm = randomize_(torch.nn.GroupNorm(groups, dim), seed=groups)
    x = (torch.randn(2, dim, h, w) + 0.5).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = blk(x)
        calls = []
        real = sad_kernels.dw_pw_stats
        monkeypatch.setattr(sad_kernels, "dw_pw_stats", lambda *a: (calls.append(a[-1]), real(*a))[1])
        y = residual_block(x, blk, kernel)
    assert calls == [kernel == "tiled"] and rel(y, ref) < 1e-5
    # Gradients, BatchNorm and uncovered layouts take the module itself.
    calls.clear()
    xg = x.clone().requires_grad_()
    residual_block(xg, blk).sum().backward()
    with torch.no_grad():
        residual_block(x.contiguous(), blk)
        bn = ResidualDepthwiseBlock(dim, norm="batch").eval()
        assert torch.equal(residual_block(x, bn), bn(x))
    assert not calls and xg.grad is not None
    with pytest.raises(ValueError, match="kernel"):
        residual_block(x, blk, "huge")


@pytest.mark.parametrize("kernel", ["twopass", "twopass_dw"])
@pytest.mark.parametrize("dim,h,w,groups", TWOPASS_CASES)
def test_triton_twopass_sad_block_equals_module(interpret, dim, h, w, groups, kernel):
    blk = randomize_(ResidualDepthwiseBlock(dim), seed=dim)
    if groups != blk.norm.num_groups:
        blk.norm = randomize_(torch.nn.GroupNorm(groups, dim), seed=groups)
    x = (torch.randn(2, dim, h, w) + 0.5).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        blk.gain.fill_(0.7)
        ref = blk(x)
        y = residual_block(x, blk, kernel)
        blk.norm = torch.nn.GroupNorm(groups, dim, affine=False)
        ref_plain, y_plain = blk(x), residual_block(x, blk, kernel)
    # The residual branch itself, so that the identity part cannot hide an error in it.
    assert rel(y - x, ref - x) < 1e-5 and rel(y_plain - x, ref_plain - x) < 1e-5
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_triton_fused_model_with_tiled_blocks_equals_model(interpret, monkeypatch):
    import segdino.kernels.sad as sad_kernels
    from segdino.fused import fuse_model
    from segdino.model import build_model

    model = randomize_(build_model("vitt16", decoder_dim=16, image_size=(32, 32))).eval()
    x = torch.randn(1, 3, 32, 32)
    calls = []
    real = sad_kernels.dw_pw_stats
    monkeypatch.setattr(sad_kernels, "dw_pw_stats", lambda *a: (calls.append(a[-1]), real(*a))[1])
    fused = fuse_model(model, fused_blocks="tiled", pointwise="linear").to(memory_format=torch.channels_last)
    with torch.no_grad():
        y = fused(x.contiguous(memory_format=torch.channels_last))
        ref = model(x)
    assert calls == [True] * 8 and rel(y, ref) < 1e-4


def test_triton_fused_model_with_twopass_blocks_equals_model(interpret, monkeypatch):
    import segdino.kernels.sad as sad_kernels
    from segdino.fused import fuse_model
    from segdino.model import build_model

    model = randomize_(build_model("vitt16", decoder_dim=16, image_size=(32, 32))).eval()
    x = torch.randn(1, 3, 32, 32)
    calls = []
    real = sad_kernels.residual_block_twopass
    monkeypatch.setattr(sad_kernels, "residual_block_twopass", lambda *a: (calls.append(a[6]), real(*a))[1])
    fused = fuse_model(model, fused_blocks="twopass").to(memory_format=torch.channels_last)
    with torch.no_grad():
        y = fused(x.contiguous(memory_format=torch.channels_last))
        ref = model(x)
    assert calls == [16] * 8 and rel(y, ref) < 1e-4
