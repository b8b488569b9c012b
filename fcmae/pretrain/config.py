"""Typed pretraining settings and their validation.

:func:`specs_from_config` turns a composed config (a plain nested dict, e.g. from Hydra) into
typed specs, checking every value first: bad input ends in one ``ValueError`` line naming the
key and the fix, before any work starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fcmae.data import DATASETS, DataSpec, check_image_root
from fcmae.data.datasets import SAMPLE_IMAGES
from fcmae.engine import check_precision, resolve_resume
from fcmae.engine.distributed import DEVICES
from fcmae.engine.precision import PRECISIONS
from fcmae.engine.wandb_logger import MODES as WANDB_MODES
from fcmae.masking import ENCODER_STRIDE
from fcmae.model import ENGINES, FCMAE, create_fcmae
from fcmae.registry import MODEL_SIZES
from sparse_ops.nn import DEPTHWISE_IMPLS

CHECKPOINT = "checkpoint.pt"
LOGGERS = ("none", "wandb")


# ----------------------------------------------------------------------------------------
# typed settings


@dataclass(frozen=True)
class ModelSpec:
    """``model`` + ``engine`` groups: which FCMAE to build."""

    size: str = "atto"
    engine: str = "sparse"
    depthwise_impl: str = "auto"
    in_chans: int = 3
    patch_size: int = 32
    mask_ratio: float = 0.6
    decoder_dim: int = 512
    decoder_depth: int = 1
    norm_pix_loss: bool = True
    drop_path_rate: float = 0.0

    def build(self) -> FCMAE:
        return create_fcmae(
            self.size,
            self.engine,
            in_chans=self.in_chans,
            patch_size=self.patch_size,
            mask_ratio=self.mask_ratio,
            decoder_dim=self.decoder_dim,
            decoder_depth=self.decoder_depth,
            norm_pix_loss=self.norm_pix_loss,
            drop_path_rate=self.drop_path_rate,
            depthwise_impl=self.depthwise_impl,
        )


@dataclass(frozen=True)
class OptimSpec:
    """AdamW. ``lr`` (absolute) wins over ``blr * effective_batch / 256`` when set."""

    blr: float = 1.5e-4
    lr: float | None = None
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    clip_grad: float | None = None


@dataclass(frozen=True)
class ScheduleSpec:
    """Per-iteration linear warm-up then cosine; ``warmup_steps`` wins over epochs if set."""

    warmup_epochs: float = 40.0
    warmup_steps: int | None = None
    min_lr: float = 0.0


@dataclass(frozen=True)
class TrainerSpec:
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 64  # per process and micro-step
    accum_steps: int = 1
    epochs: int = 800
    max_steps: int | None = None
    stop_at: int | None = None  # leave (with a checkpoint) after this step; schedule unchanged
    seed: int = 0
    deterministic: bool = False
    num_threads: int | None = None
    log_every: int = 10
    ckpt_every: int = 1000  # optimiser steps; 0: only at the end (and on a signal)
    keep_every: int = 0  # also keep checkpoint-<step>.pt every N steps; 0: never
    recon_every: int = 0  # reconstruction picture every N steps; 0: only at the end
    recon_images: int = 4
    progress_bar: bool | None = None  # None: when stderr is a terminal


@dataclass(frozen=True)
class LoggerSpec:
    name: str = "none"
    project: str = "fcmae"
    mode: str = "offline"
    entity: str | None = None
    run_name: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class PretrainSpec:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    trainer: TrainerSpec = field(default_factory=TrainerSpec)
    logger: LoggerSpec = field(default_factory=LoggerSpec)
    resume: str | None = None
    runs_root: str | None = None


# ----------------------------------------------------------------------------------------
# config -> specs, with one-line errors


def _get(cfg: Mapping, dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return default if node == "???" else node


def _int(cfg: Mapping, key: str, default: Any = None, *, low: int = 1, optional=False) -> Any:
    value = _get(cfg, key, default)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{key} must be {what}, got {value!r}")
    return value


def _float(cfg: Mapping, key: str, default: Any = None, *, low=0.0, high=math.inf, optional=False):
    value = _get(cfg, key, default)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{key} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def _choice(cfg: Mapping, key: str, choices, default: Any = None) -> Any:
    value = _get(cfg, key, default)
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not valid; choose one of: {', '.join(choices)}")
    return value


def _pair(cfg: Mapping, key: str, default: Any, kind=float) -> tuple:
    value = _get(cfg, key, default)
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"{key} must be a number or a pair [a, b], got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in value):
        raise ValueError(f"{key} must hold numbers, got {value!r}")
    return tuple(kind(v) for v in value)


def specs_from_config(cfg: Mapping) -> PretrainSpec:
    """Typed, validated settings from a composed config (nested dict); ValueError if bad."""
    size = _get(cfg, "model.size", "atto")
    if size not in MODEL_SIZES:
        raise ValueError(
            f"model.size={size!r} is unknown; choose one of: {', '.join(MODEL_SIZES)}"
        )
    engine = _choice(cfg, "engine.name", ENGINES, "sparse")
    patch = _int(cfg, "model.patch_size", 32)
    if patch % ENCODER_STRIDE:
        raise ValueError(f"model.patch_size must be a multiple of {ENCODER_STRIDE}, got {patch}")
    model = ModelSpec(
        size=size,
        engine=engine,
        depthwise_impl=_choice(cfg, "engine.depthwise_impl", DEPTHWISE_IMPLS, "auto"),
        in_chans=_int(cfg, "model.in_chans", 3),
        patch_size=patch,
        mask_ratio=_float(cfg, "model.mask_ratio", 0.6, high=0.999),
        decoder_dim=_int(cfg, "model.decoder_dim", 512),
        decoder_depth=_int(cfg, "model.decoder_depth", 1),
        norm_pix_loss=bool(_get(cfg, "model.norm_pix_loss", True)),
        drop_path_rate=_float(cfg, "model.drop_path_rate", 0.0, high=1.0),
    )
    if model.in_chans != 3:
        raise ValueError("model.in_chans must be 3 for the RGB image data sets")

    data_name = _choice(cfg, "data.name", DATASETS, "samples")
    size_hw = _pair(cfg, "data.input_size", 224, kind=int)
    if any(s <= 0 or s % patch for s in size_hw):
        raise ValueError(
            f"data.input_size={list(size_hw)} must be positive multiples of the patch size "
            f"{patch} (e.g. {patch * 3} or {patch * 7})"
        )
    scale = _pair(cfg, "data.crop_scale", (0.2, 1.0))
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"data.crop_scale must satisfy 0 < min <= max <= 1, got {list(scale)}")
    ratio = _pair(cfg, "data.crop_ratio", (3 / 4, 4 / 3))
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"data.crop_ratio must satisfy 0 < min <= max, got {list(ratio)}")
    root = _get(cfg, "data.root")
    if data_name == "imagefolder":
        root = str(check_image_root(root))
    images = tuple(_get(cfg, "data.images") or ())
    unknown = [n for n in images if n not in SAMPLE_IMAGES]
    if unknown:
        raise ValueError(
            f"data.images has unknown {unknown}; choose from: {', '.join(SAMPLE_IMAGES)}"
        )
    data = DataSpec(
        name=data_name,
        root=root,
        images=images,
        input_size=size_hw,
        crop_scale=scale,
        crop_ratio=ratio,
        hflip=_float(cfg, "data.hflip", 0.5, high=1.0),
        interpolation=_choice(
            cfg, "data.interpolation", ("bicubic", "bilinear", "nearest"), "bicubic"
        ),
        mean=tuple(_get(cfg, "data.mean", (0.485, 0.456, 0.406))),
        std=tuple(_get(cfg, "data.std", (0.229, 0.224, 0.225))),
        samples_per_epoch=_int(cfg, "data.samples_per_epoch", None, optional=True),
        num_workers=_int(cfg, "data.num_workers", 8, low=0),
    )

    betas = _pair(cfg, "optim.betas", (0.9, 0.95))
    if not all(0 <= b < 1 for b in betas):
        raise ValueError(f"optim.betas must lie in [0, 1), got {list(betas)}")
    optim = OptimSpec(
        blr=_float(cfg, "optim.blr", 1.5e-4),
        lr=_float(cfg, "optim.lr", None, optional=True),
        weight_decay=_float(cfg, "optim.weight_decay", 0.05),
        betas=betas,
        eps=_float(cfg, "optim.eps", 1e-8),
        clip_grad=_float(cfg, "optim.clip_grad", None, optional=True),
    )
    if optim.clip_grad is not None and optim.clip_grad <= 0:
        raise ValueError("optim.clip_grad must be positive, or null to disable clipping")
    schedule = ScheduleSpec(
        warmup_epochs=_float(cfg, "schedule.warmup_epochs", 40.0),
        warmup_steps=_int(cfg, "schedule.warmup_steps", None, low=0, optional=True),
        min_lr=_float(cfg, "schedule.min_lr", 0.0),
    )

    precision = _choice(cfg, "trainer.precision", PRECISIONS, "fp32")
    check_precision(
        precision,
        supports_bf16=engine == "dense",
        who="engine=sparse (MinkowskiEngine is fp32 only; engine=dense supports bf16)",
    )
    trainer = TrainerSpec(
        device=_choice(cfg, "trainer.device", DEVICES, "auto"),
        precision=precision,
        batch_size=_int(cfg, "trainer.batch_size", 64),
        accum_steps=_int(cfg, "trainer.accum_steps", 1),
        epochs=_int(cfg, "trainer.epochs", 800),
        max_steps=_int(cfg, "trainer.max_steps", None, optional=True),
        stop_at=_int(cfg, "trainer.stop_at", None, optional=True),
        seed=_int(cfg, "seed", 0, low=0),
        deterministic=bool(_get(cfg, "trainer.deterministic", False)),
        num_threads=_int(cfg, "trainer.num_threads", None, optional=True),
        log_every=_int(cfg, "trainer.log_every", 10),
        ckpt_every=_int(cfg, "trainer.ckpt_every", 1000, low=0),
        keep_every=_int(cfg, "trainer.keep_every", 0, low=0),
        recon_every=_int(cfg, "trainer.recon_every", 0, low=0),
        recon_images=_int(cfg, "trainer.recon_images", 4, low=0),
        progress_bar=_get(cfg, "trainer.progress_bar"),
    )
    logger = LoggerSpec(
        name=_choice(cfg, "logger.name", LOGGERS, "none"),
        project=str(_get(cfg, "logger.project", "fcmae")),
        mode=_choice(cfg, "logger.mode", WANDB_MODES, "offline"),
        entity=_get(cfg, "logger.entity"),
        run_name=_get(cfg, "logger.run_name"),
        tags=tuple(_get(cfg, "logger.tags") or ()),
    )
    resume = _get(cfg, "resume")
    if resume not in (None, "auto", "none", ""):
        # A given checkpoint must exist; resume=auto is resolved when the run starts.
        resolve_resume(resume, ".", CHECKPOINT)
    return PretrainSpec(
        model,
        data,
        optim,
        schedule,
        trainer,
        logger,
        resume=None if resume is None else str(resume),
        runs_root=_get(cfg, "paths.runs_root"),
    )
