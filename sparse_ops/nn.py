"""Sparse modules for every ConvNeXt V2 encoder op, on MinkowskiEngine sparse tensors.

Inputs and outputs are ``ME.SparseTensor`` with features ``(N, C)``; ops that need geometry
(the depthwise conv, GRN, drop path) also take the stage's :class:`~sparse_ops.tensor.Canvas`.
Parameters keep MinkowskiEngine's layouts: channelwise kernel ``(K*K, C)``, convolution kernel
``(K*K, C_in, C_out)``, biases ``(1, C)``, LayerNorm under ``.ln``, Linear under ``.linear``,
GRN ``gamma``/``beta`` ``(1, C)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparse_ops.functional import gelu_grn, grn, unique_rows
from sparse_ops.layout import depthwise_kernel_to_weight
from sparse_ops.minkowski import import_minkowski
from sparse_ops.tensor import Canvas

ME = import_minkowski()

DEPTHWISE_IMPLS = ("auto", "canvas", "minkowski")


def with_features(x, feats: Tensor):
    """A SparseTensor on ``x``'s coordinates with new features ``(N, C')``."""
    return ME.SparseTensor(
        feats, coordinate_map_key=x.coordinate_map_key, coordinate_manager=x.coordinate_manager
    )


def check_depthwise_impl(impl: str) -> str:
    if impl not in DEPTHWISE_IMPLS:
        raise ValueError(
            f"unknown depthwise_impl {impl!r}; expected one of: {', '.join(DEPTHWISE_IMPLS)}"
        )
    return "canvas" if impl == "auto" else impl


class SparseDepthwiseConv(ME.MinkowskiChannelwiseConvolution):
    """Submanifold K x K depthwise convolution (output sites = input sites).

    Implementations, selected by name, compute the same numbers:

    * ``minkowski``: MinkowskiEngine's channelwise convolution (a Python loop over the K*K
      offsets with gather/scatter; about 50x slower than a dense depthwise conv on CPU);
    * ``canvas``: scatter the features into a zero channels-last canvas ``(B, H, W, C)``, run
      a dense depthwise conv, gather at the sites. Masked sites hold zero, so every visible
      output is exactly the submanifold result;
    * ``auto``: ``canvas``.
    """

    def __init__(self, channels: int, kernel_size: int = 7, impl: str = "auto") -> None:
        super().__init__(channels, kernel_size=kernel_size, bias=True, dimension=2)
        self.kernel_size_ = kernel_size
        self.impl = check_depthwise_impl(impl)

    def forward(self, x, canvas: Canvas | None = None):
        if self.impl == "minkowski":
            return super().forward(x)
        if canvas is None:
            raise ValueError("the canvas depthwise conv needs the stage's Canvas")
        weight = depthwise_kernel_to_weight(self.kernel)  # (C, 1, K, K)
        dense = canvas.scatter(x.F).permute(0, 3, 1, 2)  # (B, C, H, W), channels-last memory
        out = F.conv2d(
            dense,
            weight,
            self.bias.view(-1),
            padding=self.kernel_size_ // 2,
            groups=dense.shape[1],
        )
        return with_features(x, canvas.gather(out.permute(0, 2, 3, 1)))  # (N, C)


class SparseLayerNorm(nn.Module):
    """LayerNorm over the channels of each site (eps 1e-6); parameters under ``.ln``."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim, eps=eps)

    def forward(self, x):
        return with_features(x, self.ln(x.F))


class SparseGRN(nn.Module):
    """Global Response Normalization with the L2 norm taken per sample over its own sites.

    (The reference implementation's sparse GRN took the norm over the whole batch, so it
    disagreed with its dense GRN.) ``gamma``, ``beta``: ``(1, C)``, zero-initialised.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.zeros(1, dim))
        self.beta = nn.Parameter(torch.zeros(1, dim))

    def forward(self, x, canvas: Canvas):
        samples = canvas.samples(x.F.dtype)
        out = grn(x.F, self.gamma, self.beta, canvas.batch, samples, self.eps)
        return with_features(x, out)


class SparseDropPath(nn.Module):
    """Stochastic depth per sample, drawing torch's RNG exactly as the dense ``DropPath``."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x, canvas: Canvas):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        keep = x.F.new_empty(canvas.batch_size).bernoulli_(keep_prob).div_(keep_prob)
        return with_features(x, x.F * keep.index_select(0, canvas.batch).unsqueeze(1))


class SparseBlock(nn.Module):
    """ConvNeXt V2 block on sparse tensors; keys as in the reference's MinkowskiEngine layout.

    After the depthwise conv the block works on the features ``(N, C)`` directly, with GELU and
    GRN fused (:func:`sparse_ops.functional.gelu_grn`); the modules keep their parameters.
    """

    def __init__(self, dim: int, drop_path: float = 0.0, depthwise_impl: str = "auto") -> None:
        super().__init__()
        self.dwconv = SparseDepthwiseConv(dim, 7, depthwise_impl)
        self.norm = SparseLayerNorm(dim)
        self.pwconv1 = ME.MinkowskiLinear(dim, 4 * dim)
        self.act = ME.MinkowskiGELU()
        self.grn = SparseGRN(4 * dim)
        self.pwconv2 = ME.MinkowskiLinear(4 * dim, dim)
        self.drop_path = SparseDropPath(drop_path)

    def forward(self, x, canvas: Canvas):
        y = self.pwconv1.linear(self.norm.ln(self.dwconv(x, canvas).F))  # (N, 4C)
        samples = canvas.samples(y.dtype)
        y = gelu_grn(y, self.grn.gamma, self.grn.beta, canvas.batch, samples, self.grn.eps)
        y = with_features(x, self.pwconv2.linear(y))  # (N, C)
        return with_features(x, x.F + self.drop_path(y, canvas).F)


class SparseStridedConv(ME.MinkowskiConvolution):
    """K x K stride-K convolution (the 2x2 stride-2 downsampling); kernel ``(K*K, C_in, C_out)``.

    Implementations, selected by name, compute the same numbers:

    * ``minkowski``: MinkowskiEngine's convolution (kernel map, per-offset gather-GEMM-scatter);
    * ``gather``: every output site has all K*K children visible (FCMAE's patches align with
      every stride), so the children's features are gathered into one ``(M, K*K*C_in)`` matrix
      and multiplied by the kernel in one GEMM. Output coordinates still come from
      MinkowskiEngine (``CoordinateManager.stride``). A site with a missing child (a mask not
      aligned to the stride) is an error: use ``minkowski`` for such inputs.
    """

    IMPLS = ("gather", "minkowski")

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2, impl: str = "gather"):
        super().__init__(
            in_channels, out_channels, kernel_size=stride, stride=stride, bias=True, dimension=2
        )
        if impl not in self.IMPLS:
            raise ValueError(f"unknown strided conv impl {impl!r}; expected one of {self.IMPLS}")
        self.impl = impl
        self.step = stride

    def forward(self, x, canvas: Canvas | None = None):
        if self.impl == "minkowski":
            return super().forward(x)
        if canvas is None:
            raise ValueError("the gather strided conv needs the input stage's Canvas")
        cm = x.coordinate_manager
        out_key = cm.stride(x.coordinate_map_key, self.kernel_generator.kernel_stride)
        out_sites = cm.get_coordinates(out_key).long()  # (M, 3) as (b, y, x) at the new stride
        rows = canvas.children(out_sites, x.tensor_stride[0], self.step)  # (M, K*K)
        if len(rows) and rows.min() < 0:
            raise ValueError(
                "strided conv: an output site lacks a child; the mask is not aligned to the "
                "stride (use impl='minkowski')"
            )
        k2, cin, cout = self.kernel.shape
        feats = unique_rows(x.F, rows.reshape(-1)).view(-1, k2 * cin)  # (M, K*K*C_in)
        out = torch.addmm(self.bias, feats, self.kernel.reshape(k2 * cin, cout))  # (M, C_out)
        return ME.SparseTensor(out, coordinate_map_key=out_key, coordinate_manager=cm)


class SparseDownsample(nn.Sequential):
    """LayerNorm then a 2x2 stride-2 convolution (kernel ``(4, C_in, C_out)``)."""

    def __init__(self, dim: int, out_dim: int, impl: str = "gather") -> None:
        super().__init__(SparseLayerNorm(dim), SparseStridedConv(dim, out_dim, 2, impl))

    def forward(self, x, canvas: Canvas | None = None):
        return self[1](self[0](x), canvas)


def init_sparse_weights(module: nn.Module) -> None:
    """Truncated-normal (std .02) weights and zero biases, MinkowskiEngine layers included."""
    if isinstance(module, ME.MinkowskiConvolution | ME.MinkowskiChannelwiseConvolution):
        nn.init.trunc_normal_(module.kernel, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear | nn.Conv2d):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
