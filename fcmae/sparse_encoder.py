"""The sparse ConvNeXt V2 encoder: after the stem, only visible sites exist.

The stem (a 4x4 stride-4 convolution, about 1% of the work) runs on the whole image; its
output is gathered at the visible sites into a MinkowskiEngine ``SparseTensor`` (coordinates
from the mask), and every later op computes on visible sites alone. Masks at 32-pixel patches
align with every stride, so the 2x2 stride-2 downsamplings keep the same visible pattern and
the submanifold depthwise convs never grow it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fcmae.convnextv2 import drop_path_rates, stage_visibility
from fcmae.layers import Stem
from fcmae.masking import STEM_STRIDE
from sparse_ops.nn import (
    SparseBlock,
    SparseDownsample,
    check_depthwise_impl,
    init_sparse_weights,
)
from sparse_ops.tensor import Canvas, from_sites, to_dense


class SparseConvNeXtV2Encoder(nn.Module):
    """``forward(imgs (B, C_in, H, W), mask (B, H/p, W/p))`` -> ``(B, C3, H/32, W/32)``.

    Keys follow the reference implementation's MinkowskiEngine layout (``.kernel``, ``.ln.``,
    ``.linear.``, GRN ``(1, C)``); ``fcmae.convert`` maps them to the dense layout.
    """

    engine = "sparse"

    def __init__(
        self,
        depths: tuple[int, ...],
        dims: tuple[int, ...],
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        patch_size: int = 32,
        depthwise_impl: str = "auto",
    ) -> None:
        super().__init__()
        check_depthwise_impl(depthwise_impl)
        self.depths, self.dims, self.in_chans = tuple(depths), tuple(dims), in_chans
        self.patch_size = patch_size
        self.downsample_layers = nn.ModuleList([Stem(in_chans, dims[0])])
        for i in range(1, len(dims)):
            self.downsample_layers.append(SparseDownsample(dims[i - 1], dims[i]))
        self.stages = nn.ModuleList(
            nn.ModuleList(SparseBlock(dims[i], dp, depthwise_impl) for dp in rates)
            for i, rates in enumerate(drop_path_rates(depths, drop_path_rate))
        )
        self.apply(init_sparse_weights)
        self.set_depthwise_impl(depthwise_impl)

    @property
    def depthwise_impl(self) -> str:
        return self.stages[0][0].dwconv.impl

    def set_depthwise_impl(self, impl: str) -> None:
        """Switch every op's implementation (same parameters, same numbers).

        ``minkowski`` runs MinkowskiEngine's own channelwise and strided convolutions;
        ``canvas`` (and ``auto``) the fast depthwise conv and the gather downsampling.
        """
        impl = check_depthwise_impl(impl)
        for stage in self.stages:
            for block in stage:
                block.dwconv.impl = impl
        for down in self.downsample_layers[1:]:
            down[1].impl = "minkowski" if impl == "minkowski" else "gather"

    def stem(self, imgs: Tensor, visible: Tensor):
        """Stem conv + LayerNorm at the visible stem sites only -> SparseTensor (N, C0).

        A 4x4 stride-4 conv is a matmul over non-overlapping 4x4 pixel patches, so only the
        ``N`` visible patches are gathered and multiplied.
        """
        conv, norm = self.downsample_layers[0]
        b, c, h, w = imgs.shape
        sites = visible.nonzero()  # (N, 3) as (b, y, x) on the stem grid
        s = STEM_STRIDE
        patches = imgs.reshape(b, c, h // s, s, w // s, s).permute(0, 2, 4, 1, 3, 5)
        patches = patches[sites[:, 0], sites[:, 1], sites[:, 2]].reshape(
            len(sites), -1
        )  # (N, c*s*s)
        feats = F.linear(patches, conv.weight.reshape(conv.out_channels, -1), conv.bias)
        return from_sites(norm(feats), sites)  # features (N, C0), coordinates (N, 3)

    def forward(self, imgs: Tensor, mask: Tensor) -> Tensor:
        b, _, h, w = imgs.shape
        visible = stage_visibility(mask, self.patch_size, 0)[..., 0] > 0.5  # (B, H/4, W/4)
        x = self.stem(imgs, visible)
        canvas = None
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.downsample_layers[i](x, canvas)  # tensor stride 2**i
            stride = STEM_STRIDE * 2**i
            canvas = Canvas.of(x, (b, h // stride, w // stride))
            for block in stage:
                x = block(x, canvas)
        return to_dense(x, (b, self.dims[-1], h // stride, w // stride))
