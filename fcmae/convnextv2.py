"""Dense ConvNeXt V2: the encoder (also FCMAE's masked-dense twin) and the classifier.

Key layout is the reference implementation's dense one: ``downsample_layers.{0..3}.{0,1}``,
``stages.i.j.{dwconv,norm,pwconv1,grn,pwconv2}``, and for the classifier ``norm`` and ``head``.
Activations run channels-last, ``(B, H, W, C)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fcmae.layers import Block, Downsample, LayerNorm, Stem, init_weights
from fcmae.masking import STEM_STRIDE, upsample_mask
from fcmae.registry import get_size


def drop_path_rates(depths: tuple[int, ...], drop_path_rate: float) -> list[list[float]]:
    """Linearly rising stochastic-depth rates over all blocks, split per stage."""
    # device="cpu": also callable while building on the meta device (shape-only models)
    rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
    out, start = [], 0
    for d in depths:
        out.append(rates[start : start + d])
        start += d
    return out


def stage_visibility(mask: Tensor, patch_size: int, stage: int) -> Tensor:
    """Patch mask ``(B, gh, gw)`` (1 = removed) -> visible ``(B, H_s, W_s, 1)`` at ``stage``.

    Stage 0 runs at stride 4, stage s at stride ``4 * 2**s``.
    """
    factor = patch_size // (STEM_STRIDE * 2**stage)
    return (1.0 - upsample_mask(mask, factor)).unsqueeze(-1)


class ConvNeXtV2Encoder(nn.Module):
    """Stem, three downsamplings and four stages of blocks, without a head.

    ``forward(imgs, mask=None)``: ``imgs (B, C_in, H, W)`` -> ``(B, C3, H/32, W/32)``. With a
    patch ``mask (B, H/p, W/p)`` (1 = removed), masked sites are zeroed after the stem and kept
    at zero, and every visible site gets exactly what the sparse engine computes.
    """

    def __init__(
        self,
        depths: tuple[int, ...],
        dims: tuple[int, ...],
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        patch_size: int = 32,
    ) -> None:
        super().__init__()
        self.depths, self.dims, self.in_chans = tuple(depths), tuple(dims), in_chans
        self.patch_size = patch_size
        self.downsample_layers = nn.ModuleList([Stem(in_chans, dims[0])])
        for i in range(1, len(dims)):
            self.downsample_layers.append(Downsample(dims[i - 1], dims[i]))
        self.stages = nn.ModuleList(
            nn.Sequential(*[Block(dims[i], dp) for dp in rates])
            for i, rates in enumerate(drop_path_rates(depths, drop_path_rate))
        )

    def forward_features(self, imgs: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(B, C_in, H, W)`` -> last-stage ``(B, H/32, W/32, C3)`` channels-last."""
        x = imgs
        for i, (down, stage) in enumerate(zip(self.downsample_layers, self.stages, strict=True)):
            x = down(x)
            visible = None if mask is None else stage_visibility(mask, self.patch_size, i)
            if visible is not None:
                x = x * visible
            for block in stage:
                x = block(x, visible)
        return x

    def forward(self, imgs: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.forward_features(imgs, mask).permute(0, 3, 1, 2)  # (B, C3, H/32, W/32)


class ConvNeXtV2(ConvNeXtV2Encoder):
    """Dense ConvNeXt V2 classifier: encoder -> global average pool -> LayerNorm -> Linear."""

    def __init__(
        self,
        depths: tuple[int, ...],
        dims: tuple[int, ...],
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_path_rate: float = 0.0,
        head_init_scale: float = 1.0,
    ) -> None:
        super().__init__(depths, dims, in_chans, drop_path_rate)
        self.norm = LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_weights)
        if isinstance(self.head, nn.Linear):
            self.head.weight.data.mul_(head_init_scale)
            self.head.bias.data.mul_(head_init_scale)

    def forward(self, imgs: Tensor) -> Tensor:
        x = self.forward_features(imgs)  # (B, h, w, C3)
        return self.head(self.norm(x.mean(dim=(1, 2))))  # (B, num_classes)


def create_convnextv2(
    size: str, num_classes: int = 1000, in_chans: int = 3, drop_path_rate: float = 0.0, **kw
) -> ConvNeXtV2:
    """Dense ConvNeXt V2 classifier of a registered size (``atto`` ... ``huge``)."""
    spec = get_size(size)
    return ConvNeXtV2(spec.depths, spec.dims, in_chans, num_classes, drop_path_rate, **kw)
