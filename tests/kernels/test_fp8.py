"""FP8 backbone products: the quantisation's error bound, the layer against the product it stands
for, the backbone's layers replaced, and the fallback where FP8 cannot run."""

import copy
import logging

import pytest
import torch
from torch import nn

from segdino.fast import FastModel, fast_model
from segdino.kernels.fp8 import E4M3_MAX, Fp8Linear, fp8_backbone, fp8_supported, quantize_rows
from tests.conftest import tiny


def _scaled_mm_runs_here() -> bool:
    if not hasattr(torch, "float8_e4m3fn"):
        return False
    try:
        a = torch.zeros(16, 16).to(torch.float8_e4m3fn)
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.bfloat16)
        return True
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


needs_scaled_mm = pytest.mark.skipif(not _scaled_mm_runs_here(), reason="torch._scaled_mm does not run on this CPU build")


def _rel_l2(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


def test_quantize_rows_error_bound():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 64, generator=g)
    x[1, 3] = 40.0  # an outlier: its own row's scale, the other rows untouched
    x[4] = 0.0
    q, scale = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (6, 1) and scale.dtype == torch.float32
    back = q.float() * scale
    # e4m3: 3 mantissa bits (relative error <= 2^-4 for normal values), subnormal spacing 2^-9 of the scale
    assert torch.all((back - x).abs() <= x.abs() * 2 ** -4 + scale * 2 ** -9)
    assert torch.allclose(back.abs().amax(dim=1)[[0, 1, 2, 3, 5]], x.abs().amax(dim=1)[[0, 1, 2, 3, 5]])
    assert torch.equal(back[4], torch.zeros(64))
    assert float(q.float().abs().amax()) == E4M3_MAX


@needs_scaled_mm
def test_fp8_linear_is_the_row_scaled_product():
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(64, 48)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(48, 64, generator=g) * 0.1)
        lin.bias.copy_(torch.randn(48, generator=g))
    x = torch.randn(2, 5, 64, generator=g)
    layer = Fp8Linear(lin)
    y = layer(x)
    assert y.shape == (2, 5, 48) and y.dtype == torch.float32
    # The product it stands for: dequantised activations times dequantised weights, plus the bias.
    xq, xs = quantize_rows(x.reshape(-1, 64))
    wq, ws = quantize_rows(lin.weight)
    want = ((xq.float() * xs) @ (wq.float() * ws).t() + lin.bias).reshape(2, 5, 48)
    assert _rel_l2(y, want) < 1e-2  # bf16 output rounding only
    assert 1e-4 < _rel_l2(y, lin(x)) < 6e-2  # FP8 rounding, but the same function
    assert layer(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_fp8_linear_keeps_its_dtypes_through_module_casts():
    layer = Fp8Linear(nn.Linear(32, 16))
    layer.to(torch.bfloat16)
    assert layer.weight_fp8.dtype == torch.float8_e4m3fn and layer.weight_scale.dtype == torch.float32
    assert layer.bias.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="multiples of 16"):
        Fp8Linear(nn.Linear(30, 16))


def test_fp8_backbone_replaces_the_blocks_linear_layers_only():
    model = tiny()
    vit = model.backbone.vit
    n = fp8_backbone(model)
    assert n == 4 * len(vit.blocks)
    for block in vit.blocks:
        assert isinstance(block.attn.qkv, Fp8Linear) and isinstance(block.attn.proj, Fp8Linear)
        assert isinstance(block.mlp.fc1, Fp8Linear) and isinstance(block.mlp.fc2, Fp8Linear)
    assert not any(type(m) is nn.Linear for b in vit.blocks for m in b.modules())
    assert fp8_backbone(nn.Sequential(nn.Linear(16, 16))) == 0  # no ViT: nothing to do

    # timm's EVA attention with a q/v bias (DINOv3's) adds it after calling qkv, the same sum
    assert all(b.attn.qkv_bias_separate for b in vit.blocks if b.attn.q_bias is not None)


@needs_scaled_mm
def test_fp8_backbone_model_stays_the_same_function():
    model = tiny(seed=2)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x)
        fp8 = copy.deepcopy(model)
        fp8_backbone(fp8)
        out = fp8(x)
    assert 0 < _rel_l2(out, ref) < 0.02
    # DINOv3's q/v bias, made large so that losing it would show: still added to the FP8 product
    attn = copy.deepcopy(model.backbone.vit.blocks[0].attn)
    with torch.no_grad():
        attn.q_bias.fill_(2.0)
        attn.v_bias.fill_(-2.0)
    holder = nn.Module()
    holder.backbone = nn.Module()
    holder.backbone.vit = nn.Module()
    holder.backbone.vit.blocks = nn.ModuleList([copy.deepcopy(attn)])
    assert fp8_backbone(holder) == 2
    tokens = torch.randn(2, 5, attn.qkv.in_features, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert _rel_l2(holder.backbone.vit.blocks[0](tokens), attn(tokens)) < 0.05


def test_fp8_falls_back_where_it_cannot_run(caplog):
    assert not fp8_supported(torch.device("cpu"))
    model = tiny()
    assert fast_model(model, "cpu", fp8=True) is model  # the CPU path is the model itself
    x = torch.randn(1, 3, 32, 32)
    with caplog.at_level(logging.WARNING, logger="segdino.fast"):
        fm = FastModel(model, torch.device("cpu"), torch.float32, channels_last=False, compile_mode=None, fp8=True)
    assert not fm.fp8 and "compute capability 8.9" in caplog.text
    assert not any(isinstance(m, Fp8Linear) for m in fm.modules())
    with torch.no_grad():
        assert torch.allclose(fm(x), model(x), atol=1e-6)
