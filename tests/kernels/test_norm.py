"""GroupNorm on the channels-last view is nn.GroupNorm: values and gradients, and in the fused decoder."""

import pytest
import torch

from segdino.kernels.norm import group_norm_channels_last, residual_block_channels_last
from segdino.sad import ResidualDepthwiseBlock
from tests.conftest import randomize_
from tests.kernels.conftest import rel


@pytest.mark.parametrize("groups,channels,affine,channels_last", [(4, 16, True, True), (1, 8, True, False),
                                                                  (8, 8, False, True)])
def test_channels_last_group_norm_equals_the_module_with_its_gradients(groups, channels, affine, channels_last):
    norm = torch.nn.GroupNorm(groups, channels, affine=affine).double()
    if affine:
        randomize_(norm, seed=groups)
    x = torch.randn(2, channels, 5, 7, dtype=torch.float64) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    y = group_norm_channels_last(x, norm)
    assert y.shape == x.shape and rel(y, norm(x)) < 1e-12
    assert torch.autograd.gradcheck(lambda t: group_norm_channels_last(t, norm), (x,))
    if affine:  # the affine parameters' gradients too
        g = torch.randn_like(y)
        ours = torch.autograd.grad((y * g).sum(), [x, norm.weight, norm.bias])
        theirs = torch.autograd.grad((norm(x) * g).sum(), [x, norm.weight, norm.bias])
        assert all(rel(a, b) < 1e-10 for a, b in zip(ours, theirs))


def test_channels_last_group_norm_returns_float32_under_autocast():
    norm = torch.nn.GroupNorm(2, 8)
    x = torch.randn(1, 8, 4, 4).bfloat16().contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert group_norm_channels_last(x, norm).dtype == torch.float32
    assert group_norm_channels_last(x, norm.bfloat16()).dtype == torch.bfloat16


def test_residual_blocks_with_the_channels_last_norm_equal_the_modules():
    blk = randomize_(ResidualDepthwiseBlock(16), seed=3).double()
    seq = torch.nn.Sequential(blk, randomize_(ResidualDepthwiseBlock(16), seed=4).double())
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    for module in (blk, seq):
        assert rel(residual_block_channels_last(x, module), module(x)) < 1e-12
    bn = ResidualDepthwiseBlock(16, norm="batch").double().eval()
    assert torch.equal(residual_block_channels_last(x, bn), bn(x))


def test_fused_model_with_the_channels_last_norm_trains_like_the_model():
    from segdino.fused import fuse_model
    from segdino.model import build_model
    from segdino.training.trainer import share_parameters

    model = randomize_(build_model("vitt16", decoder_dim=16, image_size=(32, 32)))
    fused = share_parameters(fuse_model(model, norm="channels_last", pointwise="linear"), model)
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    g_ref = torch.autograd.grad(ref.square().sum(), list(model.sad.parameters()))
    out = fused(x.contiguous(memory_format=torch.channels_last))
    g = torch.autograd.grad(out.square().sum(), list(model.sad.parameters()))
    assert rel(out, ref) < 1e-4 and all(rel(a, b) < 1e-3 for a, b in zip(g, g_ref))
    with pytest.raises(ValueError, match="norm"):
        fuse_model(model, norm="huge")
