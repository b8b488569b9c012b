"""Pretraining augmentation with an explicit generator: random resized crop, flip, normalise.

Every random draw comes from the ``torch.Generator`` passed in, never from a global RNG, so a
sample's augmentation depends only on its seed (see :mod:`fcmae.data.sampling`): resuming a
run, or splitting a batch over processes, reproduces exactly the same crops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATION = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


def _uniform(lo: float, hi: float, gen: torch.Generator) -> float:
    return lo + (hi - lo) * torch.rand((), generator=gen).item()


def _randint(lo: int, hi: int, gen: torch.Generator) -> int:
    """Uniform integer in ``[lo, hi]`` (inclusive)."""
    return int(torch.randint(lo, hi + 1, (), generator=gen).item())


def crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    gen: torch.Generator,
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """A random ``(top, left, h, w)`` box covering ``scale`` of the area, aspect in ``ratio``.

    Area fraction is uniform in ``scale``; the aspect (w / h) is log-uniform in ``ratio``. When
    ``attempts`` draws all fall outside the image, the largest centred box whose aspect is
    clamped to ``ratio`` is returned.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * _uniform(scale[0], scale[1], gen)
        aspect = math.exp(_uniform(log_lo, log_hi, gen))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return _randint(0, height - h, gen), _randint(0, width - w, gen), h, w
    aspect = min(max(width / height, ratio[0]), ratio[1])
    if width / height > aspect:
        h, w = height, round(height * aspect)
    else:
        h, w = round(width / aspect), width
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class PretrainTransform:
    """RGB PIL image -> float ``(3, h, w)`` normalised crop at ``size = (h, w)``.

    The crop is resampled by PIL (antialiased when shrinking), several times faster on CPU
    than an antialiased bicubic resize of a tensor.

    ``ratio`` is the crop's aspect range relative to the output's own aspect, so rectangular
    outputs are not stretched on average (for square outputs it is the usual 3/4..4/3).
    """

    size: tuple[int, int]
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    hflip: float = 0.5
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"

    def __call__(self, img: Image.Image, gen: torch.Generator) -> Tensor:
        width, height = img.size
        out_aspect = self.size[1] / self.size[0]
        ratio = (self.ratio[0] * out_aspect, self.ratio[1] * out_aspect)
        top, left, h, w = crop_box(height, width, self.scale, ratio, gen)
        crop = img.resize(
            (self.size[1], self.size[0]),
            _INTERPOLATION[self.interpolation],
            box=(left, top, left + w, top + h),
        )
        arr = np.asarray(crop.convert("RGB"), dtype=np.uint8)  # (h_out, w_out, 3)
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1)  # (3, h_out, w_out) uint8
        if torch.rand((), generator=gen).item() < self.hflip:
            x = x.flip(-1)
        x = x.float().div_(255.0)
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (x - mean) / std  # (C, h_out, w_out) float32


def denormalize(x: Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tensor:
    """Inverse of the normalisation: ``(B, C, H, W)`` -> pixel values in [0, 1] (clamped)."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * s + m).clamp(0.0, 1.0)
