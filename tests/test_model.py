"""The SegDINO model against the spec's equations, its parameter counts and backbone freezing."""

import pytest
import torch
import torch.nn.functional as F

import segdino
from tests.conftest import randomize_


def reference_forward(model, x):
    """The spec's forward, written from its equations on the model's own tensors."""
    vit = model.backbone.vit
    sd = model.state_dict()
    taps = model.config.taps
    outs = {}
    hooks = [vit.blocks[i].register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o)) for i in set(taps)]
    try:
        vit.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    B, _, H, W = x.shape
    feats = []
    for i in taps:
        t = F.layer_norm(outs[i], (vit.embed_dim,), sd["backbone.vit.norm.weight"], sd["backbone.vit.norm.bias"], eps=1e-5)
        t = t[:, vit.num_prefix_tokens:]  # drop CLS and register tokens
        feats.append(t.transpose(1, 2).reshape(B, -1, H // 16, W // 16))

    def block(x, prefix):
        d = x.shape[1]
        y = F.conv2d(x, sd[f"{prefix}.depthwise.weight"], padding=1, groups=d)
        y = F.conv2d(y, sd[f"{prefix}.pointwise.weight"])
        y = F.group_norm(y, min(32, d), sd[f"{prefix}.norm.weight"], sd[f"{prefix}.norm.bias"], eps=1e-5)
        return x + sd[f"{prefix}.gain"] * F.gelu(y)

    pyramid = []
    for i, (f, s) in enumerate(zip(feats, (8, 4, 2, 1))):
        p = F.conv2d(f, sd[f"tpa.projections.{i}.weight"])
        p = F.interpolate(p, scale_factor=s, mode="bilinear", align_corners=False) if s > 1 else p
        pyramid.append(F.conv2d(p, sd[f"tpa.refine.{i}.weight"], padding=1))
    l = [block(p, f"sad.intra.{i}") for i, p in enumerate(pyramid)]
    x4 = block(l[3], "sad.inter.3")
    up = lambda a, b: F.interpolate(a, size=b.shape[-2:], mode="bilinear", align_corners=False)
    x3 = block(up(x4, l[2]) + l[2], "sad.inter.2")
    x2 = block(up(x3, l[1]) + l[1], "sad.inter.1")
    x1 = block(up(x2, l[0]) + l[0], "sad.inter.0")
    out = F.conv2d(x1, sd["head.conv.weight"], sd["head.conv.bias"])
    return F.interpolate(out, size=(H, W), mode="bilinear", align_corners=False)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("size", [(64, 64), (80, 48)])
def test_forward_matches_spec_equations(size):
    model = randomize_(segdino.build_model("vits16", num_classes=3), seed=1).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = model(x)
        ref = reference_forward(model, x)
    assert out.shape == (2, 3, *size)
    assert rel_err(out, ref) < 1e-5


def test_reference_catches_swapped_levels():
    # The equation check must be able to fail: swapping two intra blocks changes the output.
    model = randomize_(segdino.build_model("vitt16", decoder_dim=32), seed=2).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = reference_forward(model, x)
        intra = model.sad.intra
        intra[0], intra[1] = intra[1], intra[0]
        assert rel_err(model(x), ref) > 1e-3


def test_parameter_counts_vits16():
    counts = segdino.build_model("vits16").count_parameters()
    assert round(counts["total"] / 1e6, 2) == 24.90
    assert round(counts["backbone"] / 1e6, 2) == 21.60
    assert round(counts["decoder"] / 1e6, 2) == 3.30
    assert round(segdino.build_model("vits16", decoder_dim=128).count_parameters()["decoder"] / 1e6, 2) == 0.93
    assert round(segdino.build_model("vits16", decoder_dim=512).count_parameters()["decoder"] / 1e6, 2) == 12.37


def test_frozen_backbone_gets_no_gradient_and_does_not_move():
    model = segdino.build_model("vitt16", decoder_dim=32, freeze_backbone=True)
    model.train()
    assert not model.backbone.training and model.tpa.training
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    groups = model.parameter_groups()
    assert groups["backbone"] == []
    opt = torch.optim.AdamW([p for p in model.parameters()], lr=1e-2)
    loss = model(torch.randn(2, 3, 32, 32)).square().mean()
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert any(p.grad is not None for p in groups["decoder"])
    opt.step()
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_unfrozen_backbone_moves():
    model = segdino.build_model("vitt16", decoder_dim=32)
    before = model.backbone.vit.patch_embed.proj.weight.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(1, 3, 32, 32)).square().mean().backward()
    opt.step()
    assert not torch.equal(before, model.backbone.vit.patch_embed.proj.weight)
