"""SAD: its refinement steps as one residual block (the paper) or several in a row (sad_blocks)."""

import pytest
import torch
import torch.nn.functional as F

import segdino
from segdino.sad import ResidualDepthwiseBlock, ScaleAwareDecoder
from tests.conftest import randomize_


def _pyramid(d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, d, s, s, generator=g, dtype=torch.float64) for s in (16, 8, 4, 2)]


def _decode(pyramid, intra, inter):
    """The top-down fusion written out, each step a list of blocks applied in order."""
    def run(x, blocks):
        for b in blocks:
            x = b(x)
        return x

    levels = [run(p, steps) for p, steps in zip(pyramid, intra)]
    x = run(levels[-1], inter[-1])
    for i in range(len(levels) - 2, -1, -1):
        up = F.interpolate(x, size=levels[i].shape[-2:], mode="bilinear", align_corners=False)
        x = run(up + levels[i], inter[i])
    return x


@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_every_step_applies_its_blocks_in_order(blocks):
    sad = randomize_(ScaleAwareDecoder(8, blocks=blocks)).double()
    steps = lambda m: [list(s) if isinstance(s, torch.nn.Sequential) else [s] for s in m]
    intra, inter = steps(sad.intra), steps(sad.inter)
    assert all(len(s) == blocks and all(isinstance(b, ResidualDepthwiseBlock) for b in s) for s in intra + inter)
    pyramid = _pyramid()
    with torch.no_grad():
        got, want = sad(pyramid), _decode(pyramid, intra, inter)
        # Order matters: reversing one step's blocks changes the output whenever there are two.
        flipped = _decode(pyramid, [s[::-1] for s in intra], inter)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert (blocks == 1) == torch.allclose(got, flipped, rtol=1e-9, atol=1e-9)


def test_one_block_keeps_the_paper_layout_and_two_double_the_sad_parameters():
    one, two = (segdino.build_model("vitt16", decoder_dim=32, sad_blocks=n) for n in (1, 2))
    assert any(k.startswith("sad.intra.0.depthwise.") for k in one.state_dict())  # checkpoints stay loadable
    sad_params = lambda m: sum(p.numel() for p in m.sad.parameters())
    assert sad_params(two) == 2 * sad_params(one)
    rest = lambda m: m.count_parameters()["total"] - sad_params(m)
    assert rest(two) == rest(one)
    assert two.config.sad_blocks == 2


def test_sad_blocks_survive_save_and_load(tmp_path):
    model = randomize_(segdino.build_model("vitt16", decoder_dim=16, image_size=(32, 32), sad_blocks=2)).eval()
    segdino.save_model(model, tmp_path / "m.safetensors")
    back = segdino.load_model(tmp_path / "m.safetensors").eval()
    assert back.config.sad_blocks == 2
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x))
