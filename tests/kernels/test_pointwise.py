"""1x1 convs as matrix products on the channels-last view equal the convs, forward and backward."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segdino.kernels.pointwise import PointwiseLinear, is_pointwise, linear_pointwise_convs, pointwise_linear
from tests.kernels.conftest import rel


@pytest.mark.parametrize("bias", [False, True])
def test_pointwise_linear_is_the_conv_and_keeps_channels_last(bias):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 5, 7, generator=g, dtype=torch.float64)
    w = torch.randn(4, 6, 1, 1, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64) if bias else None
    ref = F.conv2d(x, w, b)
    for layout in (torch.channels_last, torch.contiguous_format):
        y = pointwise_linear(x.contiguous(memory_format=layout), w, b)
        assert y.shape == ref.shape and rel(y, ref) < 1e-14
        assert y.is_contiguous(memory_format=torch.channels_last)
    # On a channels-last map the rows are the map's own memory: the GEMM reads it in place.
    xc = x.contiguous(memory_format=torch.channels_last)
    assert xc.permute(0, 2, 3, 1).is_contiguous()
    args = (xc.requires_grad_(), w.requires_grad_()) + ((b.requires_grad_(),) if bias else ())
    assert torch.autograd.gradcheck(lambda *a: pointwise_linear(*a), args)


def test_pointwise_module_shares_the_convs_parameters_and_state_dict():
    net = nn.Sequential(nn.Conv2d(6, 4, 1), nn.Conv2d(4, 4, 3, padding=1),
                        nn.Sequential(nn.Conv2d(4, 2, 1, bias=False)), nn.Conv2d(2, 2, 1, stride=2))
    weights = [net[0].weight, net[0].bias, net[2][0].weight]
    keys = list(net.state_dict())
    x = torch.randn(1, 6, 8, 8)
    net.requires_grad_(False)
    ref = net(x)
    assert linear_pointwise_convs(net) == 2
    assert isinstance(net[0], PointwiseLinear) and isinstance(net[2][0], PointwiseLinear)
    assert isinstance(net[1], nn.Conv2d) and isinstance(net[3], nn.Conv2d)  # 3x3 and strided stay convs
    assert [net[0].weight, net[0].bias, net[2][0].weight] == weights and net[2][0].bias is None
    assert list(net.state_dict()) == keys
    assert rel(net(x), ref) < 1e-6
    assert not is_pointwise(nn.Conv2d(4, 4, 1, groups=2)) and not is_pointwise(nn.Conv2d(4, 4, 1, padding=1))
    with pytest.raises(ValueError, match="1x1"):
        PointwiseLinear(nn.Conv2d(4, 4, 3))
