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


def load_images(paths: list[str | Path], size: tuple[int, int], mean, std) -> Tensor:
    """Image files -> ``(B, 3, H, W)`` normalised: resized to cover ``size``, centre-cropped."""
    out = []
    for p in paths:
        with Image.open(p) as img:
            img = img.convert("RGB")
        w, h = img.size
        scale = max(size[0] / h, size[1] / w)
        rw, rh = max(size[1], round(w * scale)), max(size[0], round(h * scale))
        left, top = (rw - size[1]) // 2, (rh - size[0]) // 2
        img = img.resize((rw, rh), Image.Resampling.BICUBIC)
        img = img.crop((left, top, left + size[1], top + size[0]))
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        out.append(x)  # (3, H, W) in [0, 1]
    x = torch.stack(out)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s


def reconstruct_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    images: list[str | Path] | None = None,
    *,
    num_images: int = 4,
    input_size: tuple[int, int] | None = None,
    mask_ratio: float | None = None,
    engine: str = "dense",
    seed: int = 0,
    device: str = "cpu",
) -> Path:
    """Write the reconstruction grid of an ``fcmae-pretrain`` checkpoint as a PNG.

    ``images``: files (resized and centre-cropped); None: scikit-image's sample photographs.
    ``input_size``/``mask_ratio`` default to the checkpoint's. The ``dense`` engine computes
    the same numbers as the sparse one and runs anywhere.
    """
    from dataclasses import replace

    from fcmae.data.datasets import SAMPLE_IMAGES, skimage_data_dir
    from fcmae.engine import load_checkpoint
    from fcmae.pretrain import FORMAT, ModelSpec, sample_masks

    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("format") != FORMAT or "model_spec" not in ckpt:
        raise ValueError(f"{checkpoint} is not an fcmae-pretrain checkpoint; pass checkpoint.pt")
    spec = replace(ModelSpec(**ckpt["model_spec"]), engine=engine)
    if mask_ratio is not None:
        spec = replace(spec, mask_ratio=mask_ratio)
    data = ckpt.get("data_spec", {})
    mean, std = data.get("mean", IMAGENET_MEAN), data.get("std", IMAGENET_STD)
    size = tuple(input_size or data.get("input_size", (224, 224)))
    if any(s % spec.patch_size for s in size):
        raise ValueError(f"input_size {list(size)} must be multiples of {spec.patch_size}")
    if not images:
        folder = skimage_data_dir()
        images = [folder / f for f in list(SAMPLE_IMAGES.values())[:num_images]]
    model = spec.build()
    state = ckpt["model"]
    if engine == "dense":
        from fcmae.convert import sparse_to_dense

        state = sparse_to_dense(state)
    model.load_state_dict(state, strict=True)
    model.to(device)
    imgs = load_images(images, size, mean, std).to(device)  # (B, 3, H, W)
    grid = (size[0] // spec.patch_size, size[1] // spec.patch_size)
    mask = sample_masks(len(imgs), grid, spec.mask_ratio, seed, -1, 0).to(device)
    return save_png(reconstruction_grid(model, imgs, mask, mean, std), out)
