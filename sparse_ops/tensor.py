"""Dense <-> sparse conversion whose coordinates come from a visibility mask.

A sparse batch is a MinkowskiEngine ``SparseTensor`` with features ``(N, C)`` and coordinates
``(N, 3)`` int32 as ``(b, y, x)``; at tensor stride ``s`` the spatial coordinates are multiples
of ``s``. Sites are taken from the mask, never from feature values, so a visible site whose
features are all zero still exists. Sparse-to-dense always takes the output shape explicitly,
so a row or column masked in every sample never shrinks the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from sparse_ops.functional import unique_rows
from sparse_ops.minkowski import import_minkowski


@dataclass(frozen=True)
class Canvas:
    """Where the N sites of a sparse tensor sit in a dense ``(B, H, W)`` grid.

    ``flat`` (N,) int64 indexes the channels-last canvas ``(B*H*W, C)`` in the row order of the
    sparse features; ``batch`` (N,) int64 is each site's sample. Computed once per stage (the
    sites do not change inside a stage) and shared by every op that needs geometry.
    """

    shape: tuple[int, int, int]  # (B, H, W) at this tensor stride
    flat: Tensor
    batch: Tensor
    _samples: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, x, shape: tuple[int, int, int]) -> Canvas:
        b, h, w = shape
        coords = x.C.long()  # (N, 3) as (b, y, x), multiples of the stride
        stride = x.tensor_stride
        y, xx = coords[:, 1] // stride[0], coords[:, 2] // stride[1]
        flat = (coords[:, 0] * h + y) * w + xx
        return cls(shape=(b, h, w), flat=flat, batch=coords[:, 0])

    @property
    def batch_size(self) -> int:
        return self.shape[0]

    def samples(self, dtype: torch.dtype) -> Tensor:
        """One-hot ``(B, N)`` matrix of each site's sample, for per-sample sums as a GEMM."""
        if dtype not in self._samples:
            ids = torch.arange(self.batch_size, device=self.batch.device)
            self._samples[dtype] = (ids[:, None] == self.batch[None, :]).to(dtype)
        return self._samples[dtype]

    def scatter(self, feats: Tensor) -> Tensor:
        """``(N, C)`` -> zero-filled channels-last canvas ``(B, H, W, C)``."""
        b, h, w = self.shape
        dense = feats.new_zeros(b * h * w, feats.shape[1]).index_copy(0, self.flat, feats)
        return dense.view(b, h, w, -1)

    def rows(self) -> Tensor:
        """Row of each canvas cell in the features ``(B*H*W,)`` int64, -1 where no site."""
        pos = self.flat.new_full((self.shape[0] * self.shape[1] * self.shape[2],), -1)
        return pos.index_copy_(0, self.flat, torch.arange(len(self.flat)))

    def children(self, out_sites: Tensor, stride: int, k: int) -> Tensor:
        """Feature rows ``(M, k*k)`` of the k x k children of each coarser site, -1 if absent.

        ``out_sites (M, 3)`` are ``(b, y, x)`` coordinates (multiples of ``stride * k``); the
        children are ordered like MinkowskiEngine's kernel offsets, ``dy + k * dx``.
        """
        _, h, w = self.shape
        y0 = out_sites[:, 1] // stride
        x0 = out_sites[:, 2] // stride
        d = torch.arange(k, device=out_sites.device)
        dy, dx = d.repeat(k), d.repeat_interleave(k)  # offset j = dy + k * dx
        flat = (out_sites[:, :1] * h + y0[:, None] + dy) * w + x0[:, None] + dx  # (M, k*k)
        return self.rows()[flat]

    def gather(self, dense: Tensor) -> Tensor:
        """Channels-last ``(B, H, W, C)`` -> ``(N, C)`` at the sites, in feature row order."""
        return unique_rows(dense.reshape(-1, dense.shape[-1]), self.flat)


def to_sparse(x: Tensor, visible: Tensor, *, tensor_stride: int = 1, coordinate_manager=None):
    """Dense ``x (B, C, H, W)`` + ``visible (B, H, W)`` (nonzero = site exists) -> SparseTensor.

    Coordinates are ``(b, y * s, x * s)`` for ``s = tensor_stride``.
    """
    if x.dim() != 4 or visible.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(
            f"to_sparse needs x (B, C, H, W) and visible (B, H, W); got {tuple(x.shape)} and "
            f"{tuple(visible.shape)}"
        )
    sites = visible.nonzero()  # (N, 3) int64 as (b, y, x)
    feats = x.permute(0, 2, 3, 1)[sites[:, 0], sites[:, 1], sites[:, 2]]  # (N, C)
    return from_sites(
        feats, sites, tensor_stride=tensor_stride, coordinate_manager=coordinate_manager
    )


def from_sites(feats: Tensor, sites: Tensor, *, tensor_stride: int = 1, coordinate_manager=None):
    """SparseTensor from features ``(N, C)`` at grid sites ``(N, 3)`` as ``(b, y, x)``."""
    ME = import_minkowski()
    coords = sites.to(torch.int32, copy=True)  # (N, 3); ``sites`` stays untouched
    coords[:, 1:] *= tensor_stride
    return ME.SparseTensor(
        feats,
        coordinates=coords.contiguous(),
        tensor_stride=tensor_stride,
        coordinate_manager=coordinate_manager,
    )


def to_dense(x, shape: tuple[int, int, int, int]) -> Tensor:
    """SparseTensor -> dense ``(B, C, H, W)`` (channels-last memory), zeros where no site.

    ``shape`` is explicit: the output never shrinks when the last rows or columns are empty.
    """
    b, c, h, w = shape
    if x.F.shape[1] != c:
        raise ValueError(f"to_dense: features have {x.F.shape[1]} channels, shape asks {c}")
    canvas = Canvas.of(x, (b, h, w))
    coords = x.C.long()
    s = x.tensor_stride
    if len(coords) and (
        coords[:, 0].max() >= b
        or (coords[:, 1] // s[0]).max() >= h
        or (coords[:, 2] // s[1]).max() >= w
    ):
        raise ValueError(f"to_dense: sites lie outside the requested shape {shape}")
    return canvas.scatter(x.F).permute(0, 3, 1, 2)
