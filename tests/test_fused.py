"""The fused model computes the same function as the model, with the same gradients."""

import pytest
import torch

from segdino.kernels.rope import CachedRope
from tests.conftest import randomize_
from tests.kernels.conftest import rel


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

