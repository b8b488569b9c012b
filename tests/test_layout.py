"""MinkowskiEngine kernel layouts against torch.nn.functional.conv2d (pins the mapping)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparse_ops.layout import (
    conv_kernel_to_weight,
    conv_weight_to_kernel,
    depthwise_kernel_to_weight,
    depthwise_weight_to_kernel,
)
from sparse_ops.minkowski import import_minkowski
from sparse_ops.nn import SparseDepthwiseConv
from sparse_ops.tensor import Canvas, to_dense, to_sparse
from tests.conftest import assert_close

ME = import_minkowski()


def _full(x):
    return to_sparse(x, torch.ones(x.shape[0], *x.shape[2:], dtype=torch.bool))


@pytest.mark.parametrize("impl", ["minkowski", "canvas"])
@pytest.mark.parametrize("kernel_size", [3, 7])
def test_depthwise_kernel_layout_matches_conv2d(impl, kernel_size):
    b, c, h, w = 2, 5, 9, 11  # non-square so that a y/x swap cannot pass
    x = torch.randn(b, c, h, w)
    conv = SparseDepthwiseConv(c, kernel_size, impl)
    torch.nn.init.normal_(conv.kernel)
    torch.nn.init.normal_(conv.bias)
    st = _full(x)
    out = conv(st, Canvas.of(st, (b, h, w)))
    weight = depthwise_kernel_to_weight(conv.kernel.detach())
    ref = F.conv2d(x, weight, conv.bias.detach().view(-1), padding=kernel_size // 2, groups=c)
    assert_close(to_dense(out, (b, c, h, w)).detach(), ref, 1e-5, f"{impl} depthwise")


def test_downsample_kernel_layout_matches_conv2d():
    b, cin, cout, h, w = 2, 4, 6, 8, 10
    x = torch.randn(b, cin, h, w)
    conv = ME.MinkowskiConvolution(cin, cout, kernel_size=2, stride=2, bias=True, dimension=2)
    torch.nn.init.normal_(conv.kernel)
    torch.nn.init.normal_(conv.bias)
    out = conv(_full(x))
    ref = F.conv2d(x, conv_kernel_to_weight(conv.kernel.detach()), conv.bias.detach()[0], stride=2)
    assert_close(to_dense(out, (b, cout, h // 2, w // 2)).detach(), ref, 1e-5, "downsample")


def test_layout_round_trips_are_exact():
    k = torch.randn(49, 8)
    assert torch.equal(depthwise_weight_to_kernel(depthwise_kernel_to_weight(k)), k)
    kc = torch.randn(4, 3, 5)
    assert torch.equal(conv_weight_to_kernel(conv_kernel_to_weight(kc)), kc)
    with pytest.raises(ValueError, match="square"):
        depthwise_kernel_to_weight(torch.randn(48, 2))
