"""FCMAE masks and patch vectors.

A mask is ``(B, gh, gw)`` at patch-grid resolution (``gh = H / patch_size``), 1 = removed,
0 = visible. Each stage sees it upsampled (nearest) to its own resolution. Patch vectors are
ordered ``(p, q, c)``: row within the patch, column, then channel fastest.
"""

from __future__ import annotations

import torch
from torch import Tensor

STEM_STRIDE = 4
ENCODER_STRIDE = 32  # stem (4) x three 2x downsamplings


def check_mask_ratio(mask_ratio: float) -> None:
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")


def check_patch_size(patch_size: int) -> None:
    if patch_size <= 0 or patch_size % ENCODER_STRIDE:
        raise ValueError(
            f"patch_size must be a positive multiple of {ENCODER_STRIDE} (the encoder's total "
            f"stride), got {patch_size}"
        )


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Patches kept per sample: ``int(L * (1 - ratio))``, at least one."""
    return max(1, int(num_patches * (1.0 - mask_ratio)))


def random_mask(
    batch: int,
    grid: tuple[int, int],
    mask_ratio: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample random mask ``(B, gh, gw)`` float, 1 = removed, by random permutation."""
    check_mask_ratio(mask_ratio)
    gh, gw = grid
    num = gh * gw
    keep = num_visible(num, mask_ratio)
    noise = torch.rand(batch, num, device=device, generator=generator)  # (B, L)
    ids = noise.argsort(dim=1)
    mask = torch.ones(batch, num, device=device)
    mask.scatter_(1, ids[:, :keep], 0.0)
    return mask.view(batch, gh, gw)


def upsample_mask(mask: Tensor, factor: int) -> Tensor:
    """Nearest upsampling of ``(B, h, w)`` by an integer factor -> ``(B, h*f, w*f)``."""
    if factor == 1:
        return mask
    return mask.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)


def patchify(imgs: Tensor, patch_size: int) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, L, p*p*C)`` with ``L = (H/p)(W/p)``, vectors ordered (p, q, c)."""
    b, c, h, w = imgs.shape
    p = patch_size
    x = imgs.reshape(b, c, h // p, p, w // p, p)  # (B, C, gh, p, gw, q)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, p, q, C)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: Tensor, patch_size: int, grid: tuple[int, int], in_chans: int) -> Tensor:
    """Inverse of :func:`patchify`: ``(B, L, p*p*C)`` -> ``(B, C, gh*p, gw*p)``."""
    b = x.shape[0]
    gh, gw = grid
    p = patch_size
    x = x.reshape(b, gh, gw, p, p, in_chans).permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, p, gw, q)
    return x.reshape(b, in_chans, gh * p, gw * p)


def check_inputs(
    imgs: Tensor, mask: Tensor | None, in_chans: int, patch_size: int
) -> Tensor | None:
    """Validate a batch for FCMAE; return the mask as ``(B, gh, gw)`` float (or None).

    ``mask`` may be ``(B, gh, gw)`` or flattened ``(B, gh*gw)``, 1 = removed.
    """
    if imgs.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(imgs.shape)}")
    b, c, h, w = imgs.shape
    if c != in_chans:
        raise ValueError(f"expected {in_chans} input channels (in_chans), got {c}")
    if h % patch_size or w % patch_size or h == 0 or w == 0:
        raise ValueError(
            f"image size {h}x{w} is not divisible by the patch size {patch_size}; "
            f"resize or crop to multiples of {patch_size}"
        )
    if mask is None:
        return None
    gh, gw = h // patch_size, w // patch_size
    if tuple(mask.shape) == (b, gh * gw):
        mask = mask.reshape(b, gh, gw)
    if tuple(mask.shape) != (b, gh, gw):
        raise ValueError(
            f"mask must be (B, H/p, W/p) = {(b, gh, gw)} or (B, L) = {(b, gh * gw)} for "
            f"{h}x{w} images and patch size {patch_size}, got {tuple(mask.shape)}"
        )
    return mask.to(dtype=imgs.dtype)
