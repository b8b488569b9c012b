"""Labelled image sets for finetuning: scikit-learn's digits (embedded) or train/ + val/ folders.

Augmentation is timm's (:func:`timm.data.create_transform`: random resized crop, flip,
RandAugment, random erasing); evaluation is resize + centre crop. timm's transforms draw from
the global ``random``, numpy and torch generators, so each training sample runs its transform
under those generators seeded by its own sample seed (the ``(index, seed)`` keys of
:class:`fcmae.data.sampling.StepSampler`) and restored afterwards: a sample's augmentation
depends on its seed only, whatever the worker, process count or resume point.

Items are ``(img (C, H, W) float, label int)``; :func:`collate_labelled` stacks them.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from fcmae.data.datasets import IMAGE_EXTENSIONS

FINETUNE_DATASETS = ("digits", "imagefolder")
SPLITS = ("train", "val")


@dataclass(frozen=True)
class FinetuneDataSpec:
    """Typed ``data`` group of ``fcmae-finetune``.

    ``digits``: scikit-learn's 1797 handwritten digits (8x8 grey, 10 classes, in the wheel),
    upscaled to ``digits_size`` RGB and split ``val_fraction`` (stratified, fixed seed).
    ``imagefolder``: ``root/train/<class>/*`` and ``root/val/<class>/*``.
    """

    name: str = "digits"
    root: str | None = None
    input_size: int = 32
    digits_size: int = 32
    val_fraction: float = 0.2
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    interpolation: str = "bicubic"
    crop_pct: float = 0.875  # evaluation: resize to input_size / crop_pct, centre crop
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    num_workers: int = 4


@dataclass(frozen=True)
class AugSpec:
    """Training-time augmentation (timm). ``rand_augment`` None disables RandAugment."""

    rand_augment: str | None = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.25  # random erasing probability
    mixup: float = 0.8  # mixup alpha; 0 disables
    cutmix: float = 1.0  # cutmix alpha; 0 disables
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.1

    @property
    def mixes(self) -> bool:
        return self.mixup_prob > 0 and (self.mixup > 0 or self.cutmix > 0)


# -- transforms ------------------------------------------------------------------------------


@contextlib.contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed python ``random``, numpy's and torch's CPU generators; restore them on exit."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


def _posterize_keep_one_bit(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    return ImageOps.posterize(img, max(1, int(bits_to_keep)))


def _patch_posterize(transform) -> None:
    """Make this transform's RandAugment posterize ops keep at least one bit.

    FIXME: timm 1.0.31 maps the top RandAugment magnitude (10, reached by ``mstd`` noise) of
    ``PosterizeIncreasing`` to 0 bits, which Pillow 13 rejects ("bits must be between or
    equal to 1 and 8"; older Pillow returned a black image). Only this transform object's ops
    are changed (no global patch); drop this when timm clamps the level itself.
    """
    from timm.data.auto_augment import RandAugment

    for t in getattr(transform, "transforms", []):
        if isinstance(t, RandAugment):
            for op in t.ops:
                if op.name.startswith("Posterize"):
                    op.aug_fn = _posterize_keep_one_bit


def train_transform(data: FinetuneDataSpec, aug: AugSpec) -> Callable:
    from timm.data import create_transform

    tf = create_transform(
        data.input_size,
        is_training=True,
        scale=data.crop_scale,
        hflip=data.hflip,
        color_jitter=0.0 if aug.rand_augment else 0.4,
        auto_augment=aug.rand_augment,
        interpolation=data.interpolation,
        re_prob=aug.reprob,
        re_mode="pixel",
        re_count=1,
        mean=data.mean,
        std=data.std,
    )
    _patch_posterize(tf)
    return tf


def eval_transform(data: FinetuneDataSpec) -> Callable:
    from timm.data import create_transform

    return create_transform(
        data.input_size,
        is_training=False,
        crop_pct=data.crop_pct,
        interpolation=data.interpolation,
        mean=data.mean,
        std=data.std,
    )


# -- data sets -------------------------------------------------------------------------------


class LabelledImages(Dataset):
    """Images (PIL, in memory, or paths) with integer labels.

    ``dataset[i]`` -> ``(img, label)`` under the transform; ``dataset[(i, seed)]`` runs the
    transform under global generators seeded by ``seed`` (see :func:`seeded_global_rngs`).
    """

    def __init__(
        self, items: list[Image.Image | Path], labels: list[int], classes: list[str], transform
    ) -> None:
        if len(items) != len(labels):
            raise ValueError("images and labels differ in number")
        self.items, self.labels, self.classes = items, labels, classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def _image(self, i: int) -> Image.Image:
        item = self.items[i]
        if isinstance(item, Image.Image):
            return item
        try:
            with Image.open(item) as img:
                return img.convert("RGB")
        except (OSError, ValueError, SyntaxError) as err:
            # NOTE: no skipping here (unlike pretraining): a labelled set with a silently
            # replaced image would bias its class; the file is named for the user to fix.
            raise RuntimeError(f"cannot read image {item} ({err}); fix or remove it") from err

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        img = self._image(index)
        if seed is None:
            return self.transform(img), self.labels[index]
        with seeded_global_rngs(seed):
            return self.transform(img), self.labels[index]


def digits_split(size: int, val_fraction: float) -> dict[str, tuple[list[Image.Image], list]]:
    """scikit-learn's digits as ``size`` x ``size`` RGB PIL images, split deterministically."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()  # ships in the wheel: no download
    pixels = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)  # (N, 8, 8)
    images = [
        Image.fromarray(p, mode="L").resize((size, size), Image.Resampling.BICUBIC).convert("RGB")
        for p in pixels
    ]
    idx = np.arange(len(images))
    train_idx, val_idx = train_test_split(
        idx, test_size=val_fraction, random_state=0, stratify=digits.target
    )
    return {
        split: ([images[i] for i in ids], [int(digits.target[i]) for i in ids])
        for split, ids in (("train", train_idx), ("val", val_idx))
    }


def scan_labelled(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    """ImageFolder layout: ``folder/<class>/**/<image>``; classes sorted by name."""
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    files, labels = [], []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(folder / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                    files.append(Path(dirpath) / f)
                    labels.append(label)
    return files, labels, classes


def check_labelled_root(root: str | os.PathLike | None) -> Path:
    """``data.root`` must hold ``train/`` and ``val/`` with the same class folders."""
    if root is None or str(root) in ("", "???"):
        raise ValueError(
            "data.root is required for data=imagefolder; pass data.root=/path/with/train_and_val"
        )
    path = Path(root).expanduser()
    missing = [s for s in SPLITS if not (path / s).is_dir()]
    if missing:
        raise ValueError(
            f"data.root={root} has no {' or '.join(s + '/' for s in missing)} folder; it must "
            "hold train/<class>/* and val/<class>/*"
        )
    found = {}
    for s in SPLITS:
        found[s] = sorted(
            d.name for d in (path / s).iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        if not found[s]:
            raise ValueError(f"data.root={root}: {s}/ holds no class folders")
    if found["train"] != found["val"]:
        only = sorted(set(found["train"]) ^ set(found["val"]))
        raise ValueError(
            f"data.root={root}: train/ and val/ have different classes ({', '.join(only[:5])}); "
            "give both the same class folders"
        )
    return path


def build_finetune_datasets(
    data: FinetuneDataSpec, aug: AugSpec
) -> tuple[LabelledImages, LabelledImages]:
    """(train with augmentation, val with the evaluation transform)."""
    train_tf, val_tf = train_transform(data, aug), eval_transform(data)
    if data.name == "digits":
        split = digits_split(data.digits_size, data.val_fraction)
        classes = [str(d) for d in range(10)]
        return (
            LabelledImages(*split["train"], classes, train_tf),
            LabelledImages(*split["val"], classes, val_tf),
        )
    if data.name != "imagefolder":
        raise ValueError(
            f"unknown data set {data.name!r}; expected one of: {', '.join(FINETUNE_DATASETS)}"
        )
    root = check_labelled_root(data.root)
    sets = []
    for split, tf in (("train", train_tf), ("val", val_tf)):
        files, labels, classes = scan_labelled(root / split)
        if not files:
            raise ValueError(f"data.root={data.root}: {split}/ holds no images")
        sets.append(LabelledImages(files, labels, classes, tf))
    return sets[0], sets[1]


def collate_labelled(batch: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    """-> ``imgs (B, C, H, W)``, ``labels (B,)`` int64."""
    return torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch])
