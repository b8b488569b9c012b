"""FCMAE pretraining: typed settings, validation, and the training loop.

:func:`specs_from_config` turns a composed config (a plain nested dict, e.g. from Hydra) into
typed specs, checking every value first: bad input ends in one ``ValueError`` line before any
work starts. :func:`pretrain` runs the loop from explicit specs, under ``torchrun`` or not.

Checkpoint format (``checkpoint.pt`` in the run directory, written atomically)::

    format      "fcmae-pretrain/1"
    model       FCMAE state dict in the *sparse* (MinkowskiEngine) layout, whatever the engine;
                fcmae.sparse_to_dense() gives the dense layout
    size, engine, step, epoch, total_steps, effective_batch, world_size
    model_spec  ModelSpec fields (rebuild with ModelSpec(**ckpt["model_spec"]).build())
    data_spec   input_size, mean, std of the training crops
    optimizer   AdamW state;  schedule: WarmupCosine settings (the lr is a function of step)
    rng         list of per-rank RNG states (python, numpy, torch, CUDA)
    counters    {"data/skipped_images": int}
    config      the composed configuration as a plain dict
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fcmae.convert import dense_to_sparse, sparse_to_dense
from fcmae.data import (
    DATASETS,
    DataSpec,
    StepSampler,
    build_dataset,
    build_loader,
    check_image_root,
    epoch_length,
    mask_seed,
)
from fcmae.data.datasets import SAMPLE_IMAGES
from fcmae.engine import (
    GracefulStop,
    MetricsWriter,
    Progress,
    WarmupCosine,
    atomic_save,
    autocast_context,
    capture_rng_state,
    check_precision,
    configure_determinism,
    init_distributed,
    load_checkpoint,
    param_groups,
    resolve_resume,
    restore_rng_state,
    scaled_lr,
    seed_everything,
    setup_logging,
)
from fcmae.engine.distributed import (
    DEVICES,
    DistInfo,
    all_gather_object,
    all_reduce_sum,
    broadcast_object,
)
from fcmae.engine.precision import PRECISIONS
from fcmae.engine.repro import derive_seed
from fcmae.engine.wandb_logger import MODES as WANDB_MODES
from fcmae.masking import ENCODER_STRIDE, random_mask
from fcmae.model import ENGINES, FCMAE, create_fcmae
from fcmae.registry import MODEL_SIZES
from sparse_ops.nn import DEPTHWISE_IMPLS

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
FORMAT = "fcmae-pretrain/1"
LOGGERS = ("none", "wandb")
# Parameters without weight decay besides 1-D ones (norms, biases): GRN and the mask token.
NO_DECAY_KEYWORDS = ("bias", "gamma", "beta", "mask_token")
RECON_STREAM = 4  # derive_seed tag for the fixed images of the reconstruction picture


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped before applying that update."""


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


@dataclass
class PretrainResult:
    step: int
    losses: list[float]  # global mean loss of every step this process ran
    checkpoint: Path | None
    stopped_by: str | None  # None: ran to the end; else the signal's name
    model: FCMAE


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


# ----------------------------------------------------------------------------------------
# the loop


def sample_masks(
    batch: int, grid: tuple[int, int], ratio: float, seed: int, step: int, first: int
) -> Tensor:
    """Masks ``(B, gh, gw)`` for global samples ``first..first+B-1`` of optimiser ``step``.

    Each sample's mask comes from its own generator seeded by ``(seed, step, index)``, so the
    masks do not depend on how the global batch is split over processes or micro-steps.
    """
    masks = [
        random_mask(1, grid, ratio, generator=torch.Generator().manual_seed(seed_))
        for seed_ in (mask_seed(seed, step, first + i) for i in range(batch))
    ]
    return torch.cat(masks)


def _unwrap(model: torch.nn.Module) -> FCMAE:
    return model.module if hasattr(model, "module") else model


def _model_state_sparse(model: FCMAE) -> dict[str, Tensor]:
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return sd if model.engine == "sparse" else dense_to_sparse(sd)


def _load_model_state(model: FCMAE, sd: dict[str, Tensor]) -> None:
    model.load_state_dict(sparse_to_dense(sd) if model.engine == "dense" else sd, strict=True)


class _Checkpointer:
    """Saves the job's state; every rank calls :meth:`save` (RNG states are gathered)."""

    def __init__(self, run_dir: Path, info: DistInfo, static: dict[str, Any]) -> None:
        self.path = run_dir / CHECKPOINT
        self.info, self.static = info, static
        self.last_saved: Path | None = None
        self.last_step = -1

    def save(self, model, optimizer, step: int, epoch: float, counters: dict, keep=False):
        rng = all_gather_object(capture_rng_state(), self.info)
        if not self.info.is_main:
            return
        t0 = time.perf_counter()
        state = dict(self.static)
        state.update(
            model=_model_state_sparse(_unwrap(model)),
            optimizer=optimizer.state_dict(),
            step=step,
            epoch=epoch,
            rng=rng,
            counters=dict(counters),
        )
        atomic_save(state, self.path)
        if keep:
            atomic_save(state, self.path.with_name(f"checkpoint-{step:07d}.pt"))
        self.last_saved, self.last_step = self.path, step
        log.info("saved %s at step %d (%.1fs)", self.path, step, time.perf_counter() - t0)


def _fixed_images(dataset, count: int, seed: int) -> Tensor:
    """``(count, C, H, W)`` deterministic crops for the reconstruction picture."""
    n = len(dataset)
    items = [dataset[(i % n, derive_seed(seed, RECON_STREAM, i))][0] for i in range(count)]
    return torch.stack(items)


def _write_reconstruction(model, imgs, spec: PretrainSpec, run_dir: Path, step: int, wandb):
    from fcmae.visualize import reconstruction_grid, save_png

    m = _unwrap(model)
    dev = next(m.parameters()).device
    grid = (imgs.shape[-2] // m.patch_size, imgs.shape[-1] // m.patch_size)
    mask = sample_masks(len(imgs), grid, m.mask_ratio, spec.trainer.seed, -1, 0)
    picture = reconstruction_grid(m, imgs.to(dev), mask.to(dev), spec.data.mean, spec.data.std)
    path = save_png(picture, run_dir / "reconstruction.png")
    if spec.trainer.recon_every:
        save_png(picture, run_dir / "reconstructions" / f"step{step:07d}.png")
    if wandb is not None:
        wandb.log_image("train/reconstruction", picture, step, caption=f"step {step}")
    log.info("wrote %s", path)


def _check_resume_compatible(ckpt: dict, spec: PretrainSpec, path: Path) -> None:
    if ckpt.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not an fcmae-pretrain checkpoint (format {ckpt.get('format')})"
        )
    if ckpt["size"] != spec.model.size:
        raise ValueError(
            f"{path} holds model {ckpt['size']}, but model={spec.model.size}; resume with "
            f"model={ckpt['size']} or start a fresh run"
        )
    if ckpt["engine"] != spec.model.engine:
        raise ValueError(
            f"{path} was trained with engine={ckpt['engine']} (its optimiser state follows that "
            f"layout); resume with engine={ckpt['engine']}"
        )


def pretrain(
    model: ModelSpec,
    data: DataSpec,
    optim: OptimSpec,
    schedule: ScheduleSpec,
    trainer: TrainerSpec,
    logger: LoggerSpec = LoggerSpec(),  # noqa: B008 - frozen dataclass, immutable
    *,
    run_dir: str | Path,
    resume: str | None = None,
    runs_root: str | Path | None = None,
    config: dict[str, Any] | None = None,
) -> PretrainResult:
    """Pretrain an FCMAE; returns when done, or after a SIGINT/SIGTERM (checkpoint saved).

    One process per device under ``torchrun``; only rank 0 writes into ``run_dir``
    (``checkpoint.pt``, ``metrics.jsonl``, ``config.yaml``, ``train.log``,
    ``reconstruction.png``). ``resume``: None, ``auto`` (latest ``checkpoint.pt`` under
    ``runs_root``, other than ``run_dir``), or a checkpoint file / run directory.
    Raises :class:`NonFiniteLossError` if the loss stops being finite (no update is applied
    and the last checkpoint stays as it was).
    """
    spec = PretrainSpec(model, data, optim, schedule, trainer, logger, resume, None)
    run_dir = Path(run_dir)
    info = init_distributed(trainer.device)
    setup_logging(info.rank, info.world_size, run_dir if info.is_main else None)
    check_precision(
        trainer.precision, supports_bf16=model.engine == "dense", who="engine=sparse (fp32 only)"
    )
    if trainer.num_threads:
        torch.set_num_threads(trainer.num_threads)
    configure_determinism(trainer.deterministic)
    seed_everything(trainer.seed + info.rank)

    # Everything that can fail on user input happens before the first step.
    dataset = build_dataset(data)
    eff_batch = trainer.batch_size * trainer.accum_steps * info.world_size
    per_epoch = epoch_length(data, len(dataset))
    steps_per_epoch = per_epoch // eff_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"an epoch of {per_epoch} samples is smaller than the effective batch {eff_batch} "
            "(batch_size x accum_steps x processes); lower trainer.batch_size or raise "
            "data.samples_per_epoch"
        )
    total_steps = trainer.max_steps or trainer.epochs * steps_per_epoch
    end_step = min(total_steps, trainer.stop_at or total_steps)
    ckpt_path = None
    if info.is_main:
        root = runs_root if runs_root is not None else run_dir.parent
        ckpt_path = resolve_resume(resume, root, CHECKPOINT, exclude=run_dir)
    ckpt_path = broadcast_object(ckpt_path, info)
    ckpt = load_checkpoint(ckpt_path) if ckpt_path is not None else None
    if ckpt is not None:
        _check_resume_compatible(ckpt, spec, ckpt_path)

    net = model.build().to(info.device)
    groups = param_groups(net, optim.weight_decay, no_decay_keywords=NO_DECAY_KEYWORDS)
    # fused: one kernel for all tensors (on CPU about 20x faster than the per-tensor loop)
    opt = torch.optim.AdamW(groups, lr=0.0, betas=optim.betas, eps=optim.eps, fused=True)
    peak_lr = optim.lr if optim.lr is not None else scaled_lr(optim.blr, eff_batch)
    warmup = schedule.warmup_steps
    if warmup is None:
        warmup = round(schedule.warmup_epochs * steps_per_epoch)
    sched = WarmupCosine(peak_lr, total_steps, warmup, schedule.min_lr)
    start_step, counters = 0, {"data/skipped_images": 0}
    if ckpt is not None:
        _load_model_state(net, ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start_step, counters = int(ckpt["step"]), dict(ckpt.get("counters", counters))
        rng = ckpt.get("rng") or []
        if len(rng) == info.world_size:
            restore_rng_state(rng[info.rank])
        else:
            log.warning(
                "checkpoint has RNG states of %d ranks, this job has %d: reseeding",
                len(rng),
                info.world_size,
            )
        if ckpt.get("effective_batch") != eff_batch:
            log.warning(
                "effective batch changed from %s to %d: the sample order differs",
                ckpt.get("effective_batch"),
                eff_batch,
            )
        log.info("resumed from %s at step %d", ckpt_path, start_step)
        del ckpt
    net.train()
    ddp = net
    if info.distributed:
        # NOTE: 1x1 convs on channels-last activations get channels-last gradients; DDP copies
        # them into its buckets and warns about the stride mismatch. Only a (small) cost.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
        ddp = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )

    n_params = sum(p.numel() for p in net.parameters())
    log.info(
        "FCMAE %s, engine=%s, %.2fM params | %d processes x batch %d x accum %d = %d | "
        "%d steps/epoch, %d steps, lr %.3g (warm-up %d steps) | run dir %s",
        model.size,
        model.engine,
        n_params / 1e6,
        info.world_size,
        trainer.batch_size,
        trainer.accum_steps,
        eff_batch,
        steps_per_epoch,
        total_steps,
        peak_lr,
        warmup,
        run_dir,
    )
    if info.is_main and config is not None:
        from omegaconf import OmegaConf

        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    wandb = None
    if info.is_main and logger.name == "wandb":
        from fcmae.engine.wandb_logger import WandbLogger

        wandb = WandbLogger(
            run_dir,
            config or {},
            project=logger.project,
            mode=logger.mode,
            entity=logger.entity,
            name=logger.run_name,
            tags=list(logger.tags),
        )
    static = {
        "format": FORMAT,
        "size": model.size,
        "engine": model.engine,
        "model_spec": asdict(model),
        "data_spec": {
            "input_size": list(data.input_size),
            "mean": list(data.mean),
            "std": list(data.std),
        },  # fmt: skip
        "total_steps": total_steps,
        "effective_batch": eff_batch,
        "world_size": info.world_size,
        "schedule": sched.state_dict(),
        "config": config or {},
    }
    ckpt_writer = _Checkpointer(run_dir, info, static)
    recon_imgs = None
    if info.is_main and trainer.recon_images:
        recon_imgs = _fixed_images(dataset, trainer.recon_images, trainer.seed)

    grid = (data.input_size[0] // model.patch_size, data.input_size[1] // model.patch_size)
    params = [p for p in net.parameters() if p.requires_grad]
    pin = info.device.type == "cuda"
    losses: list[float] = []
    window: dict[str, float] = {"loss": 0.0, "visible": 0.0, "n": 0}
    stopped_by = None
    step = start_step
    progress = Progress(
        total_steps,
        start_step,
        enabled=info.is_main,
        device=info.device,
        log_every=trainer.log_every,
        desc="pretrain",
        bar=trainer.progress_bar,
    )
    metrics = MetricsWriter(
        run_dir / "metrics.jsonl", enabled=info.is_main, sinks=[wandb] if wandb else None
    )
    try:
        with GracefulStop() as stop:
            while step < end_step and stopped_by is None:
                epoch, first = divmod(step, steps_per_epoch)
                sampler = StepSampler(
                    len(dataset),
                    steps=steps_per_epoch,
                    batch_size=trainer.batch_size,
                    accum_steps=trainer.accum_steps,
                    world_size=info.world_size,
                    rank=info.rank,
                    seed=trainer.seed,
                    epoch=epoch,
                    start_step=first,
                )
                batches = iter(build_loader(dataset, sampler, data.num_workers, pin))
                for _ in range(first, steps_per_epoch):
                    if step >= end_step:
                        break
                    lr = sched.apply(opt, step)
                    stats = torch.zeros(5, dtype=torch.float64)  # loss, bad, stop, skip, vis
                    for micro in range(trainer.accum_steps):
                        imgs, skipped = next(batches)  # imgs: (B, C, H, W)
                        imgs = imgs.to(info.device, non_blocking=pin)
                        global_first = (micro * info.world_size + info.rank) * trainer.batch_size
                        mask = sample_masks(
                            len(imgs), grid, model.mask_ratio, trainer.seed, step, global_first
                        ).to(info.device)  # (B, gh, gw), 1 = removed
                        sync = micro == trainer.accum_steps - 1 or not info.distributed
                        with contextlib.nullcontext() if sync else ddp.no_sync():
                            with autocast_context(trainer.precision, info.device):
                                loss, _, _ = ddp(imgs, mask)
                            (loss / trainer.accum_steps).backward()
                        value = loss.detach().float().item()
                        stats[0] += value / trainer.accum_steps
                        stats[1] += 0.0 if math.isfinite(value) else 1.0
                        stats[3] += float(skipped)
                        stats[4] += 1.0 - mask.mean().item()
                    stats[2] = float(stop.requested)
                    all_reduce_sum(stats, info)  # one small collective per step
                    if stats[1] > 0:
                        kept = ckpt_writer.last_saved or "none written yet"
                        raise NonFiniteLossError(
                            f"non-finite loss at step {step + 1}; stopped before applying the "
                            f"update. Last good checkpoint: {kept} (left untouched). Lower "
                            "optim.blr, set optim.clip_grad, or use precision=fp32"
                        )
                    norm = torch.nn.utils.clip_grad_norm_(params, optim.clip_grad or math.inf)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    step += 1
                    step_loss = stats[0].item() / info.world_size
                    losses.append(step_loss)
                    counters["data/skipped_images"] += int(stats[3].item())
                    window["loss"] += step_loss
                    window["visible"] += stats[4].item() / (trainer.accum_steps * info.world_size)
                    window["n"] += 1
                    tp = progress.update(step, eff_batch, loss=step_loss, lr=lr)
                    if step % trainer.log_every == 0 or step == end_step:
                        n = window["n"]
                        metrics.write(
                            step,
                            {
                                "train/loss": window["loss"] / n,
                                "train/lr": lr,
                                "train/grad_norm": norm.item(),
                                "train/visible_fraction": window["visible"] / n,
                                "train/epoch": step / steps_per_epoch,
                                "train/img_per_s": tp["img_per_s"],
                                "train/eta_s": tp["eta_s"],
                                "sys/peak_mem_mb": tp["peak_mem_mb"],
                                **counters,
                            },
                        )
                        window = {"loss": 0.0, "visible": 0.0, "n": 0}
                    if stats[2] > 0:
                        stopped_by = stop.signal_name or "signal on another rank"
                        break
                    keep = bool(trainer.keep_every) and step % trainer.keep_every == 0
                    if (trainer.ckpt_every and step % trainer.ckpt_every == 0) or keep:
                        ckpt_writer.save(ddp, opt, step, step / steps_per_epoch, counters, keep)
                        progress.reset_timer()
                    recon_due = trainer.recon_every and step % trainer.recon_every == 0
                    if recon_imgs is not None and recon_due and step < total_steps:
                        _write_reconstruction(ddp, recon_imgs, spec, run_dir, step, wandb)
                del batches
            if ckpt_writer.last_step != step:
                ckpt_writer.save(ddp, opt, step, step / steps_per_epoch, counters)
        if stopped_by is not None:
            log.warning(
                "stopped by %s at step %d/%d; resume with resume=%s",
                stopped_by,
                step,
                total_steps,
                run_dir,
            )
        elif recon_imgs is not None:
            _write_reconstruction(ddp, recon_imgs, spec, run_dir, step, wandb)
    finally:
        progress.close()
        metrics.close()
        if wandb is not None:
            wandb.finish()
    return PretrainResult(step, losses, ckpt_writer.last_saved, stopped_by, net)


def pretrain_from_spec(
    spec: PretrainSpec, run_dir: str | Path, config: dict[str, Any] | None = None
) -> PretrainResult:
    """:func:`pretrain` with the settings of a :class:`PretrainSpec`."""
    return pretrain(
        spec.model,
        spec.data,
        spec.optim,
        spec.schedule,
        spec.trainer,
        spec.logger,
        run_dir=run_dir,
        resume=spec.resume,
        runs_root=spec.runs_root,
        config=config,
    )
