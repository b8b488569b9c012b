"""Typed pretraining settings and their validation.

:func:`specs_from_config` turns a composed config (a plain nested dict, e.g. from Hydra) into
typed specs, checking every value first: bad input ends in one ``ValueError`` line naming the
key and the fix, before any work starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fcmae.data import DATASETS, DataSpec, check_image_root
from fcmae.data.datasets import SAMPLE_IMAGES
from fcmae.engine import check_precision, resolve_resume
from fcmae.engine.config_reader import ConfigReader
from fcmae.engine.distributed import DEVICES
from fcmae.engine.precision import PRECISIONS
from fcmae.engine.wandb_logger import LoggerSpec
from fcmae.masking import ENCODER_STRIDE
from fcmae.model import ENGINES, FCMAE, create_fcmae
from fcmae.registry import MODEL_SIZES
from sparse_ops.nn import DEPTHWISE_IMPLS

CHECKPOINT = "checkpoint.pt"


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


def _triple(r: ConfigReader, key: str, default, positive: bool = False) -> tuple[float, ...]:
    value = r.get(key, default)
    ok = isinstance(value, list | tuple) and len(value) == 3
    if not ok or any(isinstance(v, bool) or not isinstance(v, int | float) for v in value):
        raise ValueError(f"{key} must be three numbers (one per RGB channel), got {value!r}")
    if positive and min(value) <= 0:
        raise ValueError(f"{key} must be positive, got {list(value)}")
    return tuple(float(v) for v in value)


def specs_from_config(cfg: Mapping) -> PretrainSpec:
    """Typed, validated settings from a composed config (nested dict); ValueError if bad."""
    r = ConfigReader(cfg)
    size = r.get("model.size", "atto")
    if size not in MODEL_SIZES:
        raise ValueError(
            f"model.size={size!r} is unknown; choose one of: {', '.join(MODEL_SIZES)}"
        )
    engine = r.choice("engine.name", ENGINES, "sparse")
    patch = r.int("model.patch_size", 32)
    if patch % ENCODER_STRIDE:
        raise ValueError(f"model.patch_size must be a multiple of {ENCODER_STRIDE}, got {patch}")
    model = ModelSpec(
        size=size,
        engine=engine,
        depthwise_impl=r.choice("engine.depthwise_impl", DEPTHWISE_IMPLS, "auto"),
        in_chans=r.int("model.in_chans", 3),
        patch_size=patch,
        mask_ratio=r.float("model.mask_ratio", 0.6, high=0.999),
        decoder_dim=r.int("model.decoder_dim", 512),
        decoder_depth=r.int("model.decoder_depth", 1),
        norm_pix_loss=r.bool("model.norm_pix_loss", True),
        drop_path_rate=r.float("model.drop_path_rate", 0.0, high=1.0),
    )
    if model.in_chans != 3:
        raise ValueError("model.in_chans must be 3 for the RGB image data sets")

    data_name = r.choice("data.name", DATASETS, "samples")
    size_hw = r.pair("data.input_size", 224, kind=int, scalar=True)
    if any(s <= 0 or s % patch for s in size_hw):
        raise ValueError(
            f"data.input_size={list(size_hw)} must be positive multiples of the patch size "
            f"{patch} (e.g. {patch * 3} or {patch * 7})"
        )
    scale = r.pair("data.crop_scale", (0.2, 1.0))
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"data.crop_scale must satisfy 0 < min <= max <= 1, got {list(scale)}")
    ratio = r.pair("data.crop_ratio", (3 / 4, 4 / 3))
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"data.crop_ratio must satisfy 0 < min <= max, got {list(ratio)}")
    root = r.get("data.root")
    if data_name == "imagefolder":
        root = str(check_image_root(root))
    images = tuple(r.get("data.images") or ())
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
        hflip=r.float("data.hflip", 0.5, high=1.0),
        interpolation=r.choice(
            "data.interpolation", ("bicubic", "bilinear", "nearest"), "bicubic"
        ),
        mean=_triple(r, "data.mean", (0.485, 0.456, 0.406)),
        std=_triple(r, "data.std", (0.229, 0.224, 0.225), positive=True),
        samples_per_epoch=r.int("data.samples_per_epoch", None, optional=True),
        num_workers=r.int("data.num_workers", 8, low=0),
    )

    betas = r.pair("optim.betas", (0.9, 0.95))
    if not all(0 <= b < 1 for b in betas):
        raise ValueError(f"optim.betas must lie in [0, 1), got {list(betas)}")
    optim = OptimSpec(
        blr=r.float("optim.blr", 1.5e-4),
        lr=r.float("optim.lr", None, optional=True),
        weight_decay=r.float("optim.weight_decay", 0.05),
        betas=betas,
        eps=r.float("optim.eps", 1e-8),
        clip_grad=r.float("optim.clip_grad", None, optional=True),
    )
    if optim.clip_grad is not None and optim.clip_grad <= 0:
        raise ValueError("optim.clip_grad must be positive, or null to disable clipping")
    schedule = ScheduleSpec(
        warmup_epochs=r.float("schedule.warmup_epochs", 40.0),
        warmup_steps=r.int("schedule.warmup_steps", None, low=0, optional=True),
        min_lr=r.float("schedule.min_lr", 0.0),
    )

    precision = r.choice("trainer.precision", PRECISIONS, "fp32")
    check_precision(
        precision,
        supports_bf16=engine == "dense",
        who="engine=sparse (MinkowskiEngine is fp32 only; engine=dense supports bf16)",
    )
    trainer = TrainerSpec(
        device=r.choice("trainer.device", DEVICES, "auto"),
        precision=precision,
        batch_size=r.int("trainer.batch_size", 64),
        accum_steps=r.int("trainer.accum_steps", 1),
        epochs=r.int("trainer.epochs", 800),
        max_steps=r.int("trainer.max_steps", None, optional=True),
        stop_at=r.int("trainer.stop_at", None, optional=True),
        seed=r.int("seed", 0, low=0),
        deterministic=r.bool("trainer.deterministic", False),
        num_threads=r.int("trainer.num_threads", None, optional=True),
        log_every=r.int("trainer.log_every", 10),
        ckpt_every=r.int("trainer.ckpt_every", 1000, low=0),
        keep_every=r.int("trainer.keep_every", 0, low=0),
        recon_every=r.int("trainer.recon_every", 0, low=0),
        recon_images=r.int("trainer.recon_images", 4, low=0),
        progress_bar=r.get("trainer.progress_bar"),
    )
    logger = LoggerSpec.read(r)
    resume = r.get("resume")
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
        runs_root=r.get("paths.runs_root"),
    )
