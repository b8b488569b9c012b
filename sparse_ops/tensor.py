"""Dense <-> sparse conversion whose coordinates come from a visibility mask.

A sparse batch is a MinkowskiEngine ``SparseTensor`` with features ``(N, C)`` and coordinates
``(N, 3)`` int32 as ``(b, y, x)``; at tensor stride ``s`` the spatial coordinates are multiples
of ``s``. Sites are taken from the mask, never from feature values, so a visible site whose
features are all zero still exists. Sparse-to-dense always takes the output shape explicitly,
so a row or column masked in every sample never shrinks the result.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

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

    def scatter(self, feats: Tensor) -> Tensor:
        """``(N, C)`` -> zero-filled channels-last canvas ``(B, H, W, C)``."""
        b, h, w = self.shape
        dense = feats.new_zeros(b * h * w, feats.shape[1]).index_copy(0, self.flat, feats)
        return dense.view(b, h, w, -1)

    def gather(self, dense: Tensor) -> Tensor:
        """Channels-last ``(B, H, W, C)`` -> ``(N, C)`` at the sites, in feature row order."""
        return dense.reshape(-1, dense.shape[-1]).index_select(0, self.flat)


def to_sparse(x: Tensor, visible: Tensor, *, tensor_stride: int = 1, coordinate_manager=None):
    """Dense ``x (B, C, H, W)`` + ``visible (B, H, W)`` (nonzero = site exists) -> SparseTensor.

    Coordinates are ``(b, y * s, x * s)`` for ``s = tensor_stride``.
    """
    ME = import_minkowski()
    if x.dim() != 4 or visible.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(
            f"to_sparse needs x (B, C, H, W) and visible (B, H, W); got {tuple(x.shape)} and "
            f"{tuple(visible.shape)}"
        )
    idx = visible.nonzero()  # (N, 3) int64 as (b, y, x)
    feats = x.permute(0, 2, 3, 1)[idx[:, 0], idx[:, 1], idx[:, 2]]  # (N, C)
    coords = idx.int().contiguous()
    coords[:, 1:] *= tensor_stride
    return ME.SparseTensor(
        feats,
        coordinates=coords,
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

