"""Dense ConvNeXt V2 building blocks, channels-last.

Activations between layers are ``(B, H, W, C)`` tensors (channels-last, contiguous). A
convolution sees them through ``permute(0, 3, 1, 2)``, i.e. a ``(B, C, H, W)`` view with
channels-last strides, which selects PyTorch's channels-last kernels (the NCHW depthwise
backward is about 7x slower on CPU).

Every module takes an optional ``visible`` mask ``(B, H, W, 1)`` (1 = site exists, 0 = masked).
With it the module computes exactly what the sparse engine computes on the visible sites, and
zeros at the masked ones: this is the masked-dense twin of ``sparse_ops``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the last (channel) dim of a channels-last ``(..., C)`` tensor, eps 1e-6."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__(dim, eps=eps)


class GRN(nn.Module):
    """Global Response Normalization on channels-last ``(B, H, W, D)``, per sample.

    ``gamma`` and ``beta`` are ``(1, 1, 1, D)`` (the reference dense layout) and start at zero.
    Masked sites must be zero on input so that they do not contribute to the L2 norm.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: Tensor) -> Tensor:
        gx = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True)  # (B, 1, 1, D)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
        return self.gamma * (x * nx) + self.beta + x


def drop_path_keep(batch: int, drop_prob: float, like: Tensor) -> Tensor:
    """Per-sample keep factors ``(B,)``: 0 or ``1 / keep_prob``, drawn from torch's RNG.

    The sparse engine draws the same numbers in the same order, so both engines agree.
    """
    keep_prob = 1.0 - drop_prob
    return like.new_empty(batch).bernoulli_(keep_prob).div_(keep_prob)


class DropPath(nn.Module):
    """Stochastic depth per sample on a ``(B, ...)`` tensor; identity in eval or at rate 0."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = drop_path_keep(x.shape[0], self.drop_prob, x)
        return x * keep.view(-1, *([1] * (x.dim() - 1)))

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def conv_cl(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """Apply a Conv2d to channels-last ``(B, H, W, C)``; returns ``(B, H', W', C')``."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class Block(nn.Module):
    """ConvNeXt V2 block: dwconv 7x7 -> LN -> Linear C->4C -> GELU -> GRN -> Linear 4C->C.

    Keys follow the reference dense layout: ``dwconv``, ``norm``, ``pwconv1``, ``grn.gamma``,
    ``grn.beta``, ``pwconv2``.
    """

    def __init__(self, dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, visible: Tensor | None = None) -> Tensor:
        # x: (B, H, W, C) channels-last; visible: (B, H, W, 1) or None
        y = conv_cl(self.dwconv, x)
        y = self.act(self.pwconv1(self.norm(y)))  # (B, H, W, 4C)
        if visible is not None:
            y = y * visible  # masked sites must not enter GRN's norm
        y = self.pwconv2(self.grn(y))
        out = x + self.drop_path(y)
        return out if visible is None else out * visible


class Stem(nn.Sequential):
    """Conv2d(k=s=4) then LayerNorm: image ``(B, C_in, H, W)`` -> ``(B, H/4, W/4, C)``."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__(nn.Conv2d(in_chans, dim, kernel_size=4, stride=4), LayerNorm(dim))

    def forward(self, imgs: Tensor) -> Tensor:
        x = self[0](imgs).permute(0, 2, 3, 1)  # (B, H/4, W/4, C) channels-last
        return self[1](x)


class Downsample(nn.Sequential):
    """LayerNorm then Conv2d(k=s=2): ``(B, H, W, C)`` -> ``(B, H/2, W/2, C')``."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__(LayerNorm(dim), nn.Conv2d(dim, out_dim, kernel_size=2, stride=2))

    def forward(self, x: Tensor) -> Tensor:
        return conv_cl(self[1], self[0](x))


def init_weights(module: nn.Module) -> None:
    """Truncated-normal (std .02) weights and zero biases for convolutions and linears."""
    if isinstance(module, nn.Conv2d | nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
