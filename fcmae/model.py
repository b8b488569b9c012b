"""FCMAE: a ConvNeXt V2 encoder on visible patches, a one-block dense decoder, masked MSE.

Two engines compute the same numbers:

* ``sparse``: after the stem only visible sites exist, as MinkowskiEngine sparse tensors
  (:mod:`fcmae.sparse_encoder`);
* ``dense``: the masked-dense twin, full maps with masked sites held at zero
  (:class:`fcmae.convnextv2.ConvNeXtV2Encoder`).

Their state dicts differ only in layout (see :mod:`fcmae.convert`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fcmae.convnextv2 import ConvNeXtV2Encoder
from fcmae.layers import Block, init_weights
from fcmae.masking import (
    ENCODER_STRIDE,
    check_inputs,
    check_mask_ratio,
    check_patch_size,
    patchify,
    random_mask,
    upsample_mask,
)
from fcmae.registry import get_size

ENGINES = ("sparse", "dense")


class FCMAE(nn.Module):
    """Fully convolutional masked autoencoder around a ConvNeXt V2 encoder.

    ``forward(imgs, mask=None) -> (loss, pred, mask)`` with ``imgs (B, C, H, W)``,
    ``pred (B, L, p*p*C)`` (patch vectors ordered (p, q, c)), ``mask (B, L)`` float, 1 = removed,
    ``L = (H/p)(W/p)``. A random mask is drawn (torch RNG) when none is given.
    """

    def __init__(
        self,
        encoder: nn.Module,
        in_chans: int = 3,
        patch_size: int = 32,
        mask_ratio: float = 0.6,
        decoder_dim: int = 512,
        decoder_depth: int = 1,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        check_patch_size(patch_size)
        check_mask_ratio(mask_ratio)
        self.in_chans, self.patch_size, self.mask_ratio = in_chans, patch_size, mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.encoder = encoder
        enc_dim = encoder.dims[-1]
        self.proj = nn.Conv2d(enc_dim, decoder_dim, kernel_size=1)
        self.mask_token = nn.Parameter(torch.zeros(1, decoder_dim, 1, 1))
        self.decoder = nn.Sequential(*[Block(decoder_dim) for _ in range(decoder_depth)])
        # Each last-stage cell predicts the 32x32 pixels under it.
        self.pred = nn.Conv2d(decoder_dim, ENCODER_STRIDE**2 * in_chans, kernel_size=1)
        for m in (self.proj, self.decoder, self.pred):
            m.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    @property
    def engine(self) -> str:
        return getattr(self.encoder, "engine", "dense")

    def random_mask(self, imgs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A fresh ``(B, H/p, W/p)`` mask for ``imgs`` at this model's mask ratio."""
        b, _, h, w = imgs.shape
        grid = (h // self.patch_size, w // self.patch_size)
        return random_mask(b, grid, self.mask_ratio, imgs.device, generator)

    def decode(self, feats: Tensor, mask: Tensor) -> Tensor:
        """Last-stage ``(B, C3, h, w)`` + patch mask -> pixel predictions ``(B, L, p*p*C)``."""
        b = feats.shape[0]
        x = self.proj(feats)  # (B, D, h, w)
        cell_mask = upsample_mask(mask, self.patch_size // ENCODER_STRIDE).unsqueeze(1)
        x = x * (1.0 - cell_mask) + self.mask_token * cell_mask
        x = x.permute(0, 2, 3, 1)  # (B, h, w, D) channels-last
        for block in self.decoder:
            x = block(x)
        x = self.pred(x.permute(0, 3, 1, 2))  # (B, 32*32*C, h, w)
        h, w = x.shape[-2:]
        # cells -> pixels (B, C, 32h, 32w) -> patch vectors at the mask's patch size
        cells = x.permute(0, 2, 3, 1).reshape(b, h, w, ENCODER_STRIDE, ENCODER_STRIDE, -1)
        pixels = cells.permute(0, 5, 1, 3, 2, 4).reshape(
            b, self.in_chans, h * ENCODER_STRIDE, w * ENCODER_STRIDE
        )
        return patchify(pixels, self.patch_size)

    def loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """MSE per patch over its values, averaged over removed patches (0 if none removed).

        ``imgs (B, C, H, W)``, ``pred (B, L, p*p*C)``, ``mask (B, L)``.
        """
        target = patchify(imgs, self.patch_size)  # (B, L, p*p*C)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        per_patch = F.mse_loss(pred, target, reduction="none").mean(dim=-1)  # (B, L)
        return (per_patch * mask).sum() / mask.sum().clamp(min=1.0)

    def forward(self, imgs: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        mask = check_inputs(imgs, mask, self.in_chans, self.patch_size)
        if mask is None:
            mask = self.random_mask(imgs).to(imgs.dtype)
        feats = self.encoder(imgs, mask)  # (B, C3, H/32, W/32), zeros at masked cells
        pred = self.decode(feats, mask)
        flat_mask = mask.flatten(1)  # (B, L)
        return self.loss(imgs, pred, flat_mask), pred, flat_mask


def create_fcmae(
    size: str,
    engine: str = "sparse",
    *,
    in_chans: int = 3,
    patch_size: int = 32,
    mask_ratio: float = 0.6,
    decoder_dim: int = 512,
    decoder_depth: int = 1,
    norm_pix_loss: bool = True,
    drop_path_rate: float = 0.0,
    depthwise_impl: str = "auto",
) -> FCMAE:
    """FCMAE of a registered size on the ``sparse`` (MinkowskiEngine) or ``dense`` engine.

    ``depthwise_impl`` selects the sparse depthwise convolution (``auto``, ``canvas``,
    ``minkowski``); the dense engine ignores it.
    """
    spec = get_size(size)
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of: {', '.join(ENGINES)}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    check_patch_size(patch_size)
    check_mask_ratio(mask_ratio)
    if engine == "sparse":
        from fcmae.sparse_encoder import SparseConvNeXtV2Encoder

        encoder: nn.Module = SparseConvNeXtV2Encoder(
            spec.depths, spec.dims, in_chans, drop_path_rate, patch_size, depthwise_impl
        )
    else:
        encoder = ConvNeXtV2Encoder(spec.depths, spec.dims, in_chans, drop_path_rate, patch_size)
        encoder.apply(init_weights)
    return FCMAE(
        encoder, in_chans, patch_size, mask_ratio, decoder_dim, decoder_depth, norm_pix_loss
    )
