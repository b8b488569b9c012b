"""Pretraining data: image sets, augmentation, deterministic sample order.

:class:`DataSpec` is the typed form of the ``data`` config group; :func:`build_dataset` turns
it into a dataset of ``(index, seed)``-addressed items, :func:`build_loader` into a loader for
one epoch of one rank.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from torch.utils.data import DataLoader, Dataset

from fcmae.data.datasets import (
    SAMPLE_IMAGES,
    ImageFolderImages,
    SampleImages,
    check_image_root,
    collate,
)
from fcmae.data.sampling import StepSampler, mask_seed
from fcmae.data.transforms import IMAGENET_MEAN, IMAGENET_STD, PretrainTransform, denormalize

DATASETS = ("samples", "imagefolder")

__all__ = [
    "DATASETS",
    "SAMPLE_IMAGES",
    "DataSpec",
    "ImageFolderImages",
    "PretrainTransform",
    "SampleImages",
    "StepSampler",
    "build_dataset",
    "build_loader",
    "check_image_root",
    "collate",
    "denormalize",
    "epoch_length",
    "mask_seed",
]


@dataclass(frozen=True)
class DataSpec:
    """Typed ``data`` group. ``input_size`` is ``(H, W)``; ``samples_per_epoch`` None = all."""

    name: str = "samples"
    root: str | None = None
    images: tuple[str, ...] = ()
    input_size: tuple[int, int] = (224, 224)
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    hflip: float = 0.5
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    samples_per_epoch: int | None = None
    num_workers: int = 8

    def transform(self) -> PretrainTransform:
        return PretrainTransform(
            size=self.input_size,
            scale=self.crop_scale,
            ratio=self.crop_ratio,
            hflip=self.hflip,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
        )


def build_dataset(spec: DataSpec) -> Dataset:
    if spec.name == "samples":
        # Twice the training resolution keeps crops at scale >= 0.2 sharp and makes them cheap.
        short = max(256, 2 * max(spec.input_size))
        return SampleImages(spec.transform(), list(spec.images), max_short_side=short)
    if spec.name == "imagefolder":
        return ImageFolderImages(spec.root, spec.transform())
    raise ValueError(f"unknown data set {spec.name!r}; expected one of: {', '.join(DATASETS)}")


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGINT/SIGTERM to the main process.

    A Ctrl-C or a scheduler's SIGTERM reaches the whole process group; a worker killed by it
    would make the main process fail mid-step instead of finishing the step and saving. The
    workers exit when the main process closes the loader (or dies: torch watches the parent).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_loader(
    dataset: Dataset, sampler: StepSampler, num_workers: int, pin_memory: bool = False
) -> DataLoader:
    """Loader of ``(imgs (B, C, H, W), skipped ())`` micro-batches in the sampler's order."""
    return DataLoader(
        dataset,
        batch_size=sampler.batch,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=False,
        persistent_workers=False,
        worker_init_fn=_ignore_stop_signals if num_workers > 0 else None,
        prefetch_factor=4 if num_workers > 0 else None,
    )


def epoch_length(spec: DataSpec, dataset_len: int) -> int:
    """Samples per epoch: ``samples_per_epoch`` if set, else the data set's size."""
    return spec.samples_per_epoch or dataset_len
