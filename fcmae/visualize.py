"""Reconstruction pictures: original, masked input, prediction, prediction + visible patches.

The model predicts, for every patch, its pixels; with ``norm_pix_loss`` (the default) those are
normalised per patch, so they are mapped back with the target patch's own mean and variance
before display (the usual MAE convention: the colour level of a masked patch comes from the
original image, its structure from the model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from fcmae.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize
from fcmae.masking import patchify, unpatchify, upsample_mask

COLUMNS = ("original", "masked", "prediction", "pred + visible")


@torch.no_grad()
def reconstruction_panels(model, imgs: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Four ``(B, C, H, W)`` images, in the model's (normalised) input space.

    ``imgs (B, C, H, W)``, ``mask (B, H/p, W/p)`` 1 = removed. Masked areas of the ``masked``
    panel are set to 0 (the data set mean after normalisation: a neutral grey).
    """
    was_training = model.training
    model.eval()
    try:
        _, pred, flat_mask = model(imgs, mask)  # pred: (B, L, p*p*C)
    finally:
        model.train(was_training)
    p, c = model.patch_size, model.in_chans
    b, _, h, w = imgs.shape
    grid = (h // p, w // p)
    pred = pred.float()
    if model.norm_pix_loss:
        target = patchify(imgs, p)  # (B, L, p*p*C)
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        pred = pred * (var + 1.0e-6) ** 0.5 + mean
    pred_img = unpatchify(pred, p, grid, c)  # (B, C, H, W)
    pix_mask = upsample_mask(flat_mask.view(b, *grid), p).unsqueeze(1)  # (B, 1, H, W)
    return {
        "original": imgs,
        "masked": imgs * (1.0 - pix_mask),
        "prediction": pred_img,
        "pred + visible": imgs * (1.0 - pix_mask) + pred_img * pix_mask,
    }


def _to_uint8(x: Tensor, mean, std) -> np.ndarray:
    """``(B, C, H, W)`` normalised -> ``(B, H, W, 3)`` uint8."""
    x = denormalize(x.float().cpu(), mean, std)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


def reconstruction_grid(
    model,
    imgs: Tensor,
    mask: Tensor,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    pad: int = 4,
    header: int = 16,
) -> np.ndarray:
    """One row per image, one column per panel, labelled: ``(H_grid, W_grid, 3)`` uint8."""
    panels = reconstruction_panels(model, imgs, mask)
    tiles = {k: _to_uint8(v, mean[: v.shape[1]], std[: v.shape[1]]) for k, v in panels.items()}
    b, h, w, _ = tiles["original"].shape
    out = np.full(
        (header + b * (h + pad) + pad, len(COLUMNS) * (w + pad) + pad, 3), 255, dtype=np.uint8
    )
    for col, name in enumerate(COLUMNS):
        x0 = pad + col * (w + pad)
        for row in range(b):
            y0 = header + pad + row * (h + pad)
            out[y0 : y0 + h, x0 : x0 + w] = tiles[name][row]
    canvas = Image.fromarray(out)
    draw = ImageDraw.Draw(canvas)
    for col, name in enumerate(COLUMNS):
        draw.text((pad + col * (w + pad) + 2, 3), name, fill=(0, 0, 0))
    return np.asarray(canvas)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an ``(H, W, 3)`` uint8 array as PNG (atomically: temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    Image.fromarray(image).save(tmp, format="PNG")
    tmp.replace(path)
    return path
