"""The backbone: its taps are the final-normed outputs of the spec's blocks, and bad inputs are refused."""

import pytest
import torch

import segdino
from segdino import DataError
from tests.conftest import randomize_


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


@pytest.mark.parametrize(
    "shape,fragment",
    [((3, 32, 32), "4-D"), ((1, 1, 32, 32), "3 channels"), ((1, 4, 32, 32), "3 channels"),
     ((1, 3, 30, 32), "multiples of 16"), ((1, 3, 32, 40), "multiples of 16")],
)
def test_bad_input_raises_data_error(shape, fragment, tiny_model):
    with pytest.raises(DataError, match=fragment):
        tiny_model(torch.randn(*shape))


def test_repeated_taps_use_one_map_for_several_levels():
    model = segdino.build_model("vitt16", decoder_dim=32, taps=(11, 11, 11, 11)).eval()
    with torch.no_grad():
        maps = model.backbone(torch.randn(1, 3, 32, 32))
    assert len(maps) == 4
    assert all(torch.equal(maps[0], m) for m in maps[1:])
