"""The SegDINO model against the spec's equations, its wiring, sizes, file round trip and errors."""

import pytest
import torch
import torch.nn.functional as F

import segdino
from segdino import ConfigError, DataError
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


def capture_taps(model, x):
    vit = model.backbone.vit
    seen = []
    hooks = [blk.register_forward_hook(lambda m, a, o, i=i: seen.append((i, o))) for i, blk in enumerate(vit.blocks)]
    try:
        with torch.no_grad():
            maps = model.backbone(x)
    finally:
        for h in hooks:
            h.remove()
    return dict(seen), maps


@pytest.mark.parametrize("backbone,taps", [("vits16", (2, 5, 8, 11)), ("vitl16", (4, 11, 17, 23))])
def test_taps_are_normed_outputs_of_the_spec_blocks(backbone, taps):
    model = randomize_(segdino.build_model(backbone, decoder_dim=32), seed=3).eval()
    assert model.config.taps == taps
    x = torch.randn(1, 3, 32, 48)
    outputs, maps = capture_taps(model, x)
    vit = model.backbone.vit
    for block_index, fmap in zip(taps, maps):
        tokens = vit.norm(outputs[block_index])[:, vit.num_prefix_tokens:]
        expected = tokens.transpose(1, 2).reshape(1, -1, 2, 3)
        assert fmap.shape == (1, vit.embed_dim, 2, 3)
        assert torch.allclose(fmap, expected, rtol=1e-5, atol=1e-6)
        # and not the un-normalised output
        raw = outputs[block_index][:, vit.num_prefix_tokens:].transpose(1, 2).reshape(1, -1, 2, 3)
        assert not torch.allclose(fmap, raw, atol=1e-3)


def test_default_taps_per_size():
    from segdino.backbone import get_spec

    assert get_spec("vitl16").default_taps == (4, 11, 17, 23)
    assert get_spec("vits16").default_taps == (2, 5, 8, 11)
    assert get_spec("vith16plus").default_taps == (7, 15, 23, 31)


@pytest.mark.parametrize("size", [(256, 256), (320, 224)])
def test_pyramid_strides(size):
    model = segdino.build_model("vitt16", decoder_dim=32).eval()
    shapes = []
    h = model.tpa.register_forward_hook(lambda m, a, o: shapes.extend(t.shape[-2:] for t in o))
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    h.remove()
    H, W = size
    assert [tuple(s) for s in shapes] == [(H // s, W // s) for s in (2, 4, 8, 16)]
    assert out.shape[-2:] == size


def test_parameter_counts_vits16():
    counts = segdino.build_model("vits16").count_parameters()
    assert round(counts["total"] / 1e6, 2) == 24.90
    assert round(counts["backbone"] / 1e6, 2) == 21.60
    assert round(counts["decoder"] / 1e6, 2) == 3.30
    assert round(segdino.build_model("vits16", decoder_dim=128).count_parameters()["decoder"] / 1e6, 2) == 0.93
    assert round(segdino.build_model("vits16", decoder_dim=512).count_parameters()["decoder"] / 1e6, 2) == 12.37


def test_save_load_round_trip_is_bit_identical(tmp_path, tiny_model):
    model = segdino.build_model("vitt16", num_classes=3, decoder_dim=32, image_size=(64, 48), norm="batch",
                                class_names=("bg", "a", "b"))
    randomize_(model, seed=4).eval()
    path = segdino.save_model(model, tmp_path / "m.safetensors")
    loaded = segdino.load_model(path)
    assert loaded.config == model.config
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    # the file alone rebuilds the model: no temporary files left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


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


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(num_classes=0), "num_classes"),
        (dict(num_classes=-2), "num_classes"),
        (dict(backbone="vitx99"), "unknown backbone"),
        (dict(decoder_dim=40), "divisible"),
        (dict(norm="layer"), "norm"),
        (dict(image_size=(100, 64)), "multiples of 16"),
        (dict(taps=(1, 2, 3)), "4 taps"),
        (dict(taps=(1, 2, 3, 12)), "outside"),
        (dict(no_such_option=1), "no_such_option"),
    ],
)
def test_bad_config_raises_config_error(kwargs, fragment):
    args = dict(backbone="vitt16", decoder_dim=32)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=fragment):
        segdino.build_model(**args)


@pytest.mark.parametrize(
    "shape,fragment",
    [((3, 32, 32), "4-D"), ((1, 1, 32, 32), "3 channels"), ((1, 4, 32, 32), "3 channels"),
     ((1, 3, 30, 32), "multiples of 16"), ((1, 3, 32, 40), "multiples of 16")],
)
def test_bad_input_raises_data_error(shape, fragment, tiny_model):
    with pytest.raises(DataError, match=fragment):
        tiny_model(torch.randn(*shape))


def test_errors_share_a_base():
    for cls in (DataError, ConfigError, segdino.CheckpointError):
        assert issubclass(cls, segdino.SegDINOError)


def test_repeated_taps_use_one_map_for_several_levels():
    model = segdino.build_model("vitt16", decoder_dim=32, taps=(11, 11, 11, 11)).eval()
    with torch.no_grad():
        maps = model.backbone(torch.randn(1, 3, 32, 32))
    assert len(maps) == 4
    assert all(torch.equal(maps[0], m) for m in maps[1:])
