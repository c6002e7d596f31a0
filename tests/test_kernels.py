"""The fused pieces of the fast path equal the reference modules, and the fallbacks engage.

Triton kernels run under Triton's CPU interpreter at tiny sizes. The interpreter must be on before
Triton is first imported (Triton's own helpers are decorated then), so the ``test_triton_*`` tests
run in a child pytest started with ``TRITON_INTERPRET=1``.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from segdino.kernels import dispatch, upsample_add
from segdino.kernels.fold import upsample_conv3x3_cl
from segdino.kernels.resize import (
    _reference,
    bilinear_add,
    bilinear_matrix,
    resize_bilinear,
    resize_bilinear_matmul,
    resize_bilinear_transposed,
)
from segdino.kernels.rope import CachedRope
from segdino.kernels.sad import fused_block_covers, residual_block
from segdino.sad import ResidualDepthwiseBlock

from tests.conftest import randomize_

SIZES = [(4, 4, 8, 8), (3, 5, 12, 20), (5, 7, 11, 13), (8, 6, 4, 3), (2, 2, 16, 16)]


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture
def interpret(monkeypatch):
    if not INTERPRETED:
        pytest.skip("runs in the child started by test_kernels_under_the_triton_interpreter")
    pytest.importorskip("triton")
    monkeypatch.delenv("SEGDINO_NO_KERNELS", raising=False)


@pytest.mark.skipif(INTERPRETED, reason="this is the child")
def test_kernels_under_the_triton_interpreter():
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("SEGDINO_NO_KERNELS", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, "-k", "triton_"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "3 passed" in proc.stdout, proc.stdout[-2000:]


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


def test_kernels_fall_back_where_they_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(1, 16, 4, 4)
    assert not dispatch.kernels_enabled(x)  # a CPU tensor, no interpreter
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.kernels_enabled(x) == dispatch.triton_available()
    monkeypatch.setenv("SEGDINO_NO_KERNELS", "1")
    assert not dispatch.kernels_enabled(x)
    monkeypatch.delenv("SEGDINO_NO_KERNELS")
    monkeypatch.setattr(dispatch, "_TRITON", False)  # a machine without Triton
    assert not dispatch.kernels_enabled(x)
    # Shapes the fused block does not cover.
    cl = torch.channels_last
    assert fused_block_covers(torch.randn(1, 32, 4, 4).contiguous(memory_format=cl), 32, 32)
    assert not fused_block_covers(torch.randn(1, 32, 4, 4), 32, 32)  # not channels-last
    assert not fused_block_covers(torch.randn(1, 24, 4, 4).contiguous(memory_format=cl), 24, 24)  # not 2^k
    assert not fused_block_covers(torch.randn(1, 32, 4, 4).double().contiguous(memory_format=cl), 32, 32)


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


def test_rope_cache_returns_timms_table():
    from segdino.backbone import create_vit, get_spec

    vit = create_vit(get_spec("vitt16"))
    rope = CachedRope(vit.rope)
    want = vit.rope.get_embed(shape=[3, 5])
    assert rope.get_embed(shape=[3, 5]) is not None and not rope._tables  # uncached sizes are computed
    rope.prime((3, 5), torch.device("cpu"))
    got = rope.get_embed(shape=[3, 5])
    assert got is rope._tables[(3, 5)] and torch.equal(got, want.float())


def test_fused_model_equals_model(monkeypatch):
    from segdino.fused import FusedHead, FusedScaleAwareDecoder, FusedTokenPyramid, fuse_model, prime_rope
    from segdino.model import build_model

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = randomize_(build_model("vitt16", decoder_dim=16, image_size=(32, 32))).double().eval()
    x = torch.randn(1, 3, 32, 48, dtype=torch.float64)
    ref = model(x)
    for kwargs in ({}, {"resize": "kernel", "rope_cache": False}):
        fused = fuse_model(model, **kwargs)
        assert isinstance(fused.tpa, FusedTokenPyramid) and isinstance(fused.sad, FusedScaleAwareDecoder)
        assert isinstance(fused.head, FusedHead)
        assert isinstance(fused.backbone.vit.rope, CachedRope) != ("rope_cache" in kwargs)
        prime_rope(fused, (32, 48), torch.device("cpu"))
        # The cached RoPE table is float32 (timm's own precision), the rest float64.
        assert rel(fused(x), ref) < (1e-12 if "rope_cache" in kwargs else 1e-8)
    # Training through the fused decoder: the same gradients as the reference modules.
    fused = fuse_model(model)
    xg = x
    model.zero_grad()
    model(xg).square().mean().backward()
    fused(xg).square().mean().backward()
    ref_grads = dict(model.named_parameters())
    for name, p in fused.named_parameters():
        key = name.replace("rope.inner.", "rope.")
        if p.grad is not None and key in ref_grads:
            assert rel(p.grad, ref_grads[key].grad) < 1e-7, name
    with pytest.raises(ValueError, match="resize"):
        fuse_model(model, resize="nearest")

