"""Pretraining image sets: photographs bundled with scikit-image, or a folder of images.

Items are addressed by ``(index, seed)`` keys (see :mod:`fcmae.data.sampling`) and returned as
``(img, skipped)``: ``img (C, H, W)`` float, the augmented crop; ``skipped`` the number of
unreadable files passed over to produce it (0 normally), which the training loop counts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from fcmae.data.transforms import PretrainTransform

log = logging.getLogger(__name__)

# Photographs that ship inside the scikit-image wheel (no pooch download), by file name.
# Colour photographs first; the grey ones are replicated to three channels.
SAMPLE_IMAGES = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "motorcycle": "motorcycle_left.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "retina": "retina.jpg",
    "camera": "camera.png",
    "coins": "coins.png",
    "moon": "moon.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "brick": "brick.png",
}

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
)


def skimage_data_dir() -> Path:
    """The folder of images inside the installed scikit-image package (not the pooch cache)."""
    import skimage.data

    return Path(skimage.data.__file__).parent


class SampleImages(Dataset):
    """scikit-image's bundled photographs, decoded once, held in memory (a few MiB).

    Files are read straight from the package folder, so no download can ever be triggered.
    ``max_short_side`` shrinks large photographs once at load (antialiased) so that crops for
    small training resolutions are cheap; None keeps them at full size.
    """

    def __init__(
        self,
        transform: PretrainTransform,
        names: list[str] | None = None,
        max_short_side: int | None = None,
    ) -> None:
        names = list(SAMPLE_IMAGES) if not names else list(names)
        unknown = [n for n in names if n not in SAMPLE_IMAGES]
        if unknown:
            raise ValueError(
                f"unknown sample images {unknown}; choose from: {', '.join(SAMPLE_IMAGES)}"
            )
        folder = skimage_data_dir()
        self.names, self.transform = names, transform
        self.images: list[Image.Image] = []
        for n in names:
            path = folder / SAMPLE_IMAGES[n]
            if not path.is_file():
                raise ValueError(
                    f"scikit-image ships no {path.name} in {folder}; reinstall scikit-image or "
                    "pick other data.images"
                )
            with Image.open(path) as img:
                img = img.convert("RGB")
                short = min(img.size)
                if max_short_side and short > max_short_side:
                    w, h = img.size
                    size = (round(w * max_short_side / short), round(h * max_short_side / short))
                    img = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
                self.images.append(img)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int]:
        index, seed = key
        gen = torch.Generator().manual_seed(seed)
        return self.transform(self.images[index], gen), 0


def scan_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursively: ImageFolder class folders or a flat folder)."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(
            Path(dirpath) / f
            for f in sorted(filenames)
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
        )
    return files


def check_image_root(root: str | os.PathLike | None) -> Path:
    """Validate ``data.root`` up front: one-line ValueError naming the problem and the fix."""
    if root is None or str(root) in ("", "???"):
        raise ValueError(
            "data.root is required for data=imagefolder; pass data.root=/path/to/images"
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise ValueError(f"data.root={root} is not a directory; pass a folder of images")
    return path


class ImageFolderImages(Dataset):
    """Every image under ``root``: a torchvision-style ImageFolder (labels ignored) or flat.

    An unreadable or corrupt file is skipped with a warning: the next file in the list stands
    in, and the item reports how many were skipped.
    """

    def __init__(self, root: str | os.PathLike, transform: PretrainTransform) -> None:
        self.root = check_image_root(root)
        self.files = scan_images(self.root)
        if not self.files:
            raise ValueError(
                f"data.root={root} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "point it at a folder of images or class sub-folders"
            )
        self.transform = transform
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int]:
        index, seed = key
        for skipped in range(min(len(self.files), 64)):
            i = (index + skipped) % len(self.files)
            try:
                with Image.open(self.files[i]) as img:
                    data = img.convert("RGB")  # decodes the whole file
            except _DECODE_ERRORS as err:
                if i not in self._warned:
                    self._warned.add(i)
                    log.warning("skipping unreadable image %s (%s)", self.files[i], err)
                continue
            gen = torch.Generator().manual_seed(seed)
            return self.transform(data, gen), skipped
        raise RuntimeError(
            f"{min(len(self.files), 64)} consecutive images from {self.files[index]} on are "
            "unreadable; check the data set"
        )


def collate(batch: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    """-> ``imgs (B, C, H, W)``, ``skipped`` () int64 total for the batch."""
    imgs = torch.stack([b[0] for b in batch])
    return imgs, torch.tensor(sum(b[1] for b in batch), dtype=torch.int64)
