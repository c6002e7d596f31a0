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
    for kwargs in ({}, {"resize": "kernel", "rope_cache": False, "pointwise": "linear"}, {"fused_blocks": "tiled"}):
        fused = fuse_model(model, **kwargs)
        assert isinstance(fused.tpa, FusedTokenPyramid) and isinstance(fused.sad, FusedScaleAwareDecoder)
        assert isinstance(fused.head, FusedHead)
        assert isinstance(fused.backbone.vit.rope, CachedRope) != ("rope_cache" in kwargs)
        prime_rope(fused, (32, 48), torch.device("cpu"))
        # The cached RoPE table is float32 (timm's own precision), the rest float64.
        assert rel(fused(x), ref) < (1e-12 if "rope_cache" in kwargs else 1e-8)
    # Training through the fused decoder: the same gradients as the reference modules.
    xg = x
    model.zero_grad()
    model(xg).square().mean().backward()
    ref_grads = dict(model.named_parameters())
    for kwargs in ({}, {"pointwise": "linear"}):
        fused = fuse_model(model, **kwargs)
        fused(xg).square().mean().backward()
        checked = 0
        for name, p in fused.named_parameters():
            key = name.replace("rope.inner.", "rope.")
            if p.grad is not None and key in ref_grads:
                assert rel(p.grad, ref_grads[key].grad) < 1e-7, name
                checked += 1
        assert checked == sum(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="resize"):
        fuse_model(model, resize="nearest")
    with pytest.raises(ValueError, match="pointwise"):
        fuse_model(model, pointwise="winograd")
    with pytest.raises(ValueError, match="fused_blocks"):
        fuse_model(model, fused_blocks="huge")


def test_linear_pointwise_keeps_the_models_parameters_and_checkpoint_format():
    from segdino.fused import fuse_model
    from segdino.kernels.pointwise import PointwiseLinear
    from segdino.model import build_model

    model = randomize_(build_model("vitt16", decoder_dim=16, image_size=(32, 32))).eval()
    conv, linear = fuse_model(model), fuse_model(model, pointwise="linear")
    # Every 1x1 conv of the decoder: 4 TPA projections, 8 SAD pointwise convs, the head's conv.
    swapped = [n for n, m in linear.named_modules() if isinstance(m, PointwiseLinear)]
    assert len(swapped) == 13 and all(n.split(".")[0] in ("tpa", "sad", "head") for n in swapped)
    assert list(linear.state_dict()) == list(conv.state_dict())
    linear.load_state_dict(conv.state_dict())  # strict: the same keys and shapes
    blk = linear.sad.intra[0]
    assert blk.pointwise.weight is dict(linear.named_parameters())["sad.intra.0.pointwise.weight"]
    assert blk.pointwise.weight.shape == model.sad.intra[0].pointwise.weight.shape



def test_fused_blocks_run_models_with_several_sad_blocks_per_step():
    from segdino.fused import fuse_model
    from segdino.model import build_model

    model = randomize_(build_model("vitt16", decoder_dim=16, image_size=(32, 32), sad_blocks=2)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for fused_blocks in ("wide", "tiled", "twopass"):
            assert torch.allclose(fuse_model(model, fused_blocks=fused_blocks)(x), model(x), atol=1e-4)
