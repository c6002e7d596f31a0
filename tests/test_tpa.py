"""TPA folds itself: the folded module computes the same pyramid with the same parameters."""

import pytest
import torch

import segdino
from segdino.tpa import SCALE_FACTORS, FoldedTokenPyramidAdaptation, TokenPyramidAdaptation
from tests.conftest import randomize_


def _maps(seed=0, c=8, h=3, w=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, h, w, generator=g, dtype=torch.float64) for _ in SCALE_FACTORS]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("resample", [True, False])
def test_fold_computes_the_same_pyramid(channels_last, resample):
    tpa = randomize_(TokenPyramidAdaptation(8, 6, resample=resample)).double()
    folded = tpa.fold(channels_last=channels_last)
    assert isinstance(folded, FoldedTokenPyramidAdaptation) and folded.channels_last == channels_last
    # Shared modules, so the parameters (and state-dict keys) are the very same tensors.
    assert folded.state_dict().keys() == tpa.state_dict().keys()
    assert all(a is b for a, b in zip(folded.parameters(), tpa.parameters()))
    maps = _maps()
    if channels_last:
        maps = [m.contiguous(memory_format=torch.channels_last) for m in maps]
    want, got = tpa(maps), folded(maps)
    assert [tuple(y.shape) for y in got] == [tuple(y.shape) for y in want]
    for y, ref in zip(got, want):
        assert (y - ref).abs().max() < 1e-10


def test_a_refine_conv_that_cannot_fold_keeps_the_direct_computation():
    tpa = randomize_(TokenPyramidAdaptation(8, 6)).double()
    # A biased conv folds (the bias is added after); a dilated one cannot, and runs as it is.
    tpa.refine[0] = torch.nn.Conv2d(6, 6, 3, padding=1, bias=True).double()
    tpa.refine[1] = torch.nn.Conv2d(6, 6, 3, padding=2, dilation=2, bias=False).double()
    maps = _maps(seed=1)
    for y, ref in zip(tpa.fold()(maps), tpa(maps)):
        assert (y - ref).abs().max() < 1e-10


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
