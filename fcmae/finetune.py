"""Finetuning a pretrained ConvNeXt V2 encoder as a timm classifier: settings and the loop.

The model is ``timm.create_model("convnextv2_<size>")`` with a new head, initialised from an
``fcmae-export`` file or straight from a pretraining checkpoint (any layout that
:func:`fcmae.export.to_canonical` reads, converted on the fly). The recipe is the paper's,
built from timm's parts: AdamW with layer-wise lr decay and no weight decay on biases, norms
and GRN gamma/beta (``timm.optim.create_optimizer_v2``), drop path, an EMA of the weights
(``timm.utils.ModelEmaV3``), mixup/cutmix with label smoothing (``timm.data.Mixup``,
``SoftTargetCrossEntropy``), RandAugment and random erasing (``timm.data.create_transform``),
per-iteration warm-up + cosine (:class:`fcmae.engine.WarmupCosine`), top-1/top-5 each epoch.

:func:`specs_from_config` validates a composed config (one ``ValueError`` line, before any
work); :func:`finetune` runs the loop from explicit specs, under ``torchrun`` or not.

Checkpoints (run directory, written atomically; ``checkpoint-last.pt`` after every epoch and
on a stop, ``checkpoint-best.pt`` when ``eval.best_metric`` improves)::

    format      "fcmae-finetune/1"
    model       timm state dict (with the new head): loads into
                timm.create_model("convnextv2_<size>", num_classes=len(classes))
    ema         the EMA weights (same keys) or None
    optimizer, step, epoch, best {"metric", "value", "step"}, rng (per rank), size,
    classes, total_steps, effective_batch, config
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from fcmae.data.finetune import (
    FINETUNE_DATASETS,
    AugSpec,
    FinetuneDataSpec,
    build_finetune_datasets,
    check_labelled_root,
    collate_labelled,
)
from fcmae.data.sampling import StepSampler
from fcmae.engine import (
    ConfigReader,
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
from fcmae.engine.wandb_logger import LoggerSpec
from fcmae.registry import MODEL_SIZES, get_size

log = logging.getLogger(__name__)

FORMAT = "fcmae-finetune/1"
LAST, BEST = "checkpoint-last.pt", "checkpoint-best.pt"
BEST_METRICS = ("val/top1", "val_ema/top1")


# ----------------------------------------------------------------------------------------
# typed settings


@dataclass(frozen=True)
class ClassifierSpec:
    """``model`` group plus ``pretrained``: the timm classifier to build and its init."""

    size: str = "atto"
    drop_path_rate: float = 0.1
    head_init_scale: float = 0.001
    pretrained: str | None = None  # fcmae-export file or pretraining checkpoint; None: scratch

    def build(self, num_classes: int) -> nn.Module:
        import timm

        return timm.create_model(
            get_size(self.size).timm_name,
            pretrained=False,
            num_classes=num_classes,
            drop_path_rate=self.drop_path_rate,
            head_init_scale=self.head_init_scale,
        )


@dataclass(frozen=True)
class FinetuneOptimSpec:
    """AdamW with layer-wise lr decay. ``lr`` (absolute) wins over ``blr * batch / 256``."""

    blr: float = 8e-4
    lr: float | None = None
    layer_decay: float = 0.9
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad: float | None = None


@dataclass(frozen=True)
class FinetuneScheduleSpec:
    warmup_epochs: float = 20.0
    warmup_steps: int | None = None  # wins over warmup_epochs when set
    min_lr: float = 1e-6


@dataclass(frozen=True)
class EmaSpec:
    enabled: bool = True
    decay: float = 0.9999
    warmup: bool = False  # timm's EMA warm-up: decay ramps up over the first steps


@dataclass(frozen=True)
class FinetuneTrainerSpec:
    """The keys of the shared ``trainer`` group that finetuning uses (others are ignored)."""

    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 32  # per process and micro-step
    accum_steps: int = 1
    epochs: int = 100
    max_steps: int | None = None
    seed: int = 0
    deterministic: bool = False
    num_threads: int | None = None
    log_every: int = 10
    ckpt_every: int = 0  # also save checkpoint-last.pt every N steps inside an epoch; 0: no
    progress_bar: bool | None = None
    best_metric: str = "val/top1"
    stop_at: int | None = None  # stop (and save) after this step, schedule unchanged


@dataclass(frozen=True)
class FinetuneSpec:
    model: ClassifierSpec = field(default_factory=ClassifierSpec)
    data: FinetuneDataSpec = field(default_factory=FinetuneDataSpec)
    aug: AugSpec = field(default_factory=AugSpec)
    optim: FinetuneOptimSpec = field(default_factory=FinetuneOptimSpec)
    schedule: FinetuneScheduleSpec = field(default_factory=FinetuneScheduleSpec)
    ema: EmaSpec = field(default_factory=EmaSpec)
    trainer: FinetuneTrainerSpec = field(default_factory=FinetuneTrainerSpec)
    logger: LoggerSpec = field(default_factory=LoggerSpec)
    resume: str | None = None
    runs_root: str | None = None


@dataclass
class FinetuneResult:
    step: int
    epoch: int  # finished epochs
    losses: list[float]  # global mean training loss of every step this process ran
    evals: list[dict[str, float]]  # one record per evaluation (epoch end)
    best: dict[str, Any]  # {"metric", "value", "step"}
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    stopped_by: str | None
    model: nn.Module


# ----------------------------------------------------------------------------------------
# config -> specs, with one-line errors


def specs_from_config(cfg: Mapping) -> FinetuneSpec:
    """Typed, validated settings from a composed config (nested dict); ValueError if bad."""
    r = ConfigReader(cfg)
    size = r.get("model.size", "atto")
    if size not in MODEL_SIZES:
        raise ValueError(
            f"model.size={size!r} is unknown; choose one of: {', '.join(MODEL_SIZES)}"
        )
    pretrained = r.get("pretrained")
    if pretrained is not None and not Path(str(pretrained)).expanduser().is_file():
        raise ValueError(
            f"pretrained={pretrained} does not exist; pass an fcmae-export file or a "
            "pretraining checkpoint (or pretrained=null to train from scratch)"
        )
    model = ClassifierSpec(
        size=size,
        drop_path_rate=r.float("model.drop_path_rate", 0.1, high=1.0),
        head_init_scale=r.float("model.head_init_scale", 0.001),
        pretrained=None if pretrained is None else str(Path(str(pretrained)).expanduser()),
    )

    name = r.choice("data.name", FINETUNE_DATASETS, "digits")
    root = r.get("data.root")
    if name == "imagefolder":
        root = str(check_labelled_root(root))
    input_size = r.int("data.input_size", 32)
    if input_size % 32:
        raise ValueError(
            f"data.input_size={input_size} must be a multiple of 32 (the encoder's stride)"
        )
    scale = r.pair("data.crop_scale", (0.08, 1.0))
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"data.crop_scale must satisfy 0 < min <= max <= 1, got {list(scale)}")
    data = FinetuneDataSpec(
        name=name,
        root=root,
        input_size=input_size,
        digits_size=r.int("data.digits_size", 32),
        val_fraction=r.float("data.val_fraction", 0.2, low=0.01, high=0.99),
        crop_scale=scale,
        hflip=r.float("data.hflip", 0.5, high=1.0),
        interpolation=r.choice("data.interpolation", ("bicubic", "bilinear"), "bicubic"),
        crop_pct=r.float("data.crop_pct", 0.875, low=0.01, high=1.0),
        mean=tuple(r.get("data.mean", (0.485, 0.456, 0.406))),
        std=tuple(r.get("data.std", (0.229, 0.224, 0.225))),
        num_workers=r.int("data.num_workers", 4, low=0),
    )
    aug = AugSpec(
        rand_augment=r.get("aug.rand_augment", "rand-m9-mstd0.5-inc1") or None,
        reprob=r.float("aug.reprob", 0.25, high=1.0),
        mixup=r.float("aug.mixup", 0.8),
        cutmix=r.float("aug.cutmix", 1.0),
        mixup_prob=r.float("aug.mixup_prob", 1.0, high=1.0),
        mixup_switch_prob=r.float("aug.mixup_switch_prob", 0.5, high=1.0),
        smoothing=r.float("aug.smoothing", 0.1, high=0.99),
    )
    if aug.rand_augment is not None and not str(aug.rand_augment).startswith("rand-"):
        raise ValueError(
            f"aug.rand_augment={aug.rand_augment!r} is not a timm RandAugment string; use e.g. "
            "rand-m9-mstd0.5-inc1, or null to disable"
        )
    betas = r.pair("optim.betas", (0.9, 0.999))
    if not all(0 <= b < 1 for b in betas):
        raise ValueError(f"optim.betas must lie in [0, 1), got {list(betas)}")
    optim = FinetuneOptimSpec(
        blr=r.float("optim.blr", 8e-4),
        lr=r.float("optim.lr", None, optional=True),
        layer_decay=r.float("optim.layer_decay", 0.9, low=1e-6, high=1.0),
        weight_decay=r.float("optim.weight_decay", 0.05),
        betas=betas,
        eps=r.float("optim.eps", 1e-8),
        clip_grad=r.float("optim.clip_grad", None, optional=True),
    )
    if optim.clip_grad is not None and optim.clip_grad <= 0:
        raise ValueError("optim.clip_grad must be positive, or null to disable clipping")
    schedule = FinetuneScheduleSpec(
        warmup_epochs=r.float("schedule.warmup_epochs", 20.0),
        warmup_steps=r.int("schedule.warmup_steps", None, low=0, optional=True),
        min_lr=r.float("schedule.min_lr", 1e-6),
    )
    ema = EmaSpec(
        enabled=r.bool("ema.enabled", True),
        decay=r.float("ema.decay", 0.9999, high=1.0),
        warmup=r.bool("ema.warmup", False),
    )
    precision = r.choice("trainer.precision", PRECISIONS, "fp32")
    batch = r.int("trainer.batch_size", 32)
    if aug.mixes and batch % 2:
        raise ValueError(
            f"trainer.batch_size={batch} must be even with mixup/cutmix (timm mixes pairs); "
            "use an even batch or aug.mixup=0 aug.cutmix=0"
        )
    best_metric = r.choice("eval.best_metric", BEST_METRICS, "val/top1")
    if best_metric == "val_ema/top1" and not ema.enabled:
        raise ValueError("eval.best_metric=val_ema/top1 needs ema.enabled=true")
    trainer = FinetuneTrainerSpec(
        device=r.choice("trainer.device", DEVICES, "auto"),
        precision=precision,
        batch_size=batch,
        accum_steps=r.int("trainer.accum_steps", 1),
        epochs=r.int("trainer.epochs", 100),
        max_steps=r.int("trainer.max_steps", None, optional=True),
        seed=r.int("seed", 0, low=0),
        deterministic=r.bool("trainer.deterministic", False),
        num_threads=r.int("trainer.num_threads", None, optional=True),
        log_every=r.int("trainer.log_every", 10),
        ckpt_every=r.int("trainer.ckpt_every", 0, low=0),
        progress_bar=r.get("trainer.progress_bar"),
        best_metric=best_metric,
        stop_at=r.int("trainer.stop_at", None, optional=True),
    )
    logger = LoggerSpec.read(r)
    resume = r.get("resume")
    return FinetuneSpec(
        model,
        data,
        aug,
        optim,
        schedule,
        ema,
        trainer,
        logger,
        resume=None if resume is None else str(resume),
        runs_root=r.get("paths.runs_root"),
    )


# ----------------------------------------------------------------------------------------
# pieces of the loop


def build_optimizer(model: nn.Module, optim: FinetuneOptimSpec, lr: float):
    """timm AdamW with layer-wise lr decay (``lr_scale`` per group) and no weight decay on
    1-D parameters: biases, LayerNorm weights, GRN gamma/beta (timm's ``mlp.grn.weight/bias``).
    """
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(
        model,
        opt="adamw",
        lr=lr,
        weight_decay=optim.weight_decay,
        layer_decay=optim.layer_decay,
        betas=optim.betas,
        eps=optim.eps,
    )


def build_criterion(aug: AugSpec) -> nn.Module:
    """Mixed (soft) targets -> SoftTargetCrossEntropy; else label smoothing or plain CE."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if aug.mixes:
        return SoftTargetCrossEntropy()  # smoothing is folded into the mixed targets
    if aug.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=aug.smoothing)
    return nn.CrossEntropyLoss()


def build_mixup(aug: AugSpec, num_classes: int):
    if not aug.mixes:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=aug.mixup,
        cutmix_alpha=aug.cutmix,
        prob=aug.mixup_prob,
        switch_prob=aug.mixup_switch_prob,
        mode="batch",
        label_smoothing=aug.smoothing,
        num_classes=num_classes,
    )


class _Shard(Sampler[int]):
    """Every ``world``-th index from ``rank``: an exact split of the evaluation set."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.ids = list(range(rank, n, world))

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self):
        return iter(self.ids)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    info: DistInfo,
    batch_size: int,
    num_workers: int,
    precision: str = "fp32",
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and cross-entropy over the whole set, summed over ranks."""
    from timm.utils import accuracy

    was_training = model.training
    model.eval()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=_Shard(len(dataset), info.rank, info.world_size),
        num_workers=num_workers,
        collate_fn=collate_labelled,
        generator=torch.Generator(),  # keep the global RNG untouched (exact resume)
    )
    sums = torch.zeros(4, dtype=torch.float64)  # loss, top1 hits, top5 hits, count
    for imgs, labels in loader:  # imgs: (B, C, H, W), labels: (B,)
        imgs = imgs.to(info.device, memory_format=torch.channels_last)
        labels = labels.to(info.device)
        with autocast_context(precision, info.device):
            logits = model(imgs)  # (B, K)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top1, top5 = accuracy(logits, labels, topk=(1, k))
        n = len(labels)
        sums += torch.tensor(
            [
                nn.functional.cross_entropy(logits, labels, reduction="sum").item(),
                top1.item() * n / 100.0,
                top5.item() * n / 100.0,
                n,
            ],
            dtype=torch.float64,
        )
    all_reduce_sum(sums, info)
    model.train(was_training)
    count = max(sums[3].item(), 1.0)
    return {
        "loss": sums[0].item() / count,
        "top1": 100.0 * sums[1].item() / count,
        "top5": 100.0 * sums[2].item() / count,
    }


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _check_resume_compatible(ckpt: dict, size: str, classes: list[str], path: Path) -> None:
    if ckpt.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not an fcmae-finetune checkpoint (format {ckpt.get('format')}); to start "
            f"from pretrained weights use pretrained={path}"
        )
    if ckpt["size"] != size:
        raise ValueError(f"{path} holds model {ckpt['size']}; resume with model={ckpt['size']}")
    if list(ckpt["classes"]) != list(classes):
        raise ValueError(f"{path} was trained on other classes; resume with the same data")


class _Checkpointer:
    """Writes ``checkpoint-last.pt`` / ``checkpoint-best.pt``; every rank calls :meth:`save`."""

    def __init__(self, run_dir: Path, info: DistInfo, static: dict[str, Any]) -> None:
        self.run_dir, self.info, self.static = run_dir, info, static
        self.last: Path | None = None
        self.best: Path | None = None
        self.last_step = -1

    def save(self, model, ema, optimizer, step: int, epoch: float, best: dict, is_best: bool):
        rng = all_gather_object(capture_rng_state(), self.info)
        self.last_step = step  # on every rank: the caller's "already saved?" test is collective
        if not self.info.is_main:
            return
        state = dict(self.static)
        state.update(
            model={k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()},
            ema=None if ema is None else {k: v.cpu() for k, v in ema.module.state_dict().items()},
            optimizer=optimizer.state_dict(),
            step=step,
            epoch=epoch,
            best=dict(best),
            rng=rng,
        )
        self.last = atomic_save(state, self.run_dir / LAST)
        if is_best:
            self.best = atomic_save(state, self.run_dir / BEST)
        log.info("saved %s at step %d%s", self.last, step, " (and best)" if is_best else "")


# ----------------------------------------------------------------------------------------
# the loop


def finetune(
    model: ClassifierSpec,
    data: FinetuneDataSpec,
    aug: AugSpec,
    optim: FinetuneOptimSpec,
    schedule: FinetuneScheduleSpec,
    ema: EmaSpec,
    trainer: FinetuneTrainerSpec,
    logger: LoggerSpec = LoggerSpec(),  # noqa: B008 - frozen dataclass, immutable
    *,
    run_dir: str | Path,
    resume: str | None = None,
    runs_root: str | Path | None = None,
    config: dict[str, Any] | None = None,
) -> FinetuneResult:
    """Finetune a timm ConvNeXt V2; returns when done, or after SIGINT/SIGTERM (saved).

    One process per device under ``torchrun``; only rank 0 writes into ``run_dir``
    (``checkpoint-last.pt``, ``checkpoint-best.pt``, ``metrics.jsonl``, ``config.yaml``,
    ``train.log``). ``resume``: None, ``auto`` (latest ``checkpoint-last.pt`` under
    ``runs_root`` other than ``run_dir``), or a checkpoint file / run directory.
    """
    run_dir = Path(run_dir)
    info = init_distributed(trainer.device)
    setup_logging(info.rank, info.world_size, run_dir if info.is_main else None)
    check_precision(trainer.precision)
    if trainer.num_threads:
        torch.set_num_threads(trainer.num_threads)
    configure_determinism(trainer.deterministic)
    seed_everything(trainer.seed + info.rank)

    # Everything that can fail on user input happens before the first step.
    train_set, val_set = build_finetune_datasets(data, aug)
    classes = train_set.classes
    eff_batch = trainer.batch_size * trainer.accum_steps * info.world_size
    steps_per_epoch = len(train_set) // eff_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"the training set ({len(train_set)} images) is smaller than the effective batch "
            f"{eff_batch} (batch_size x accum_steps x processes); lower trainer.batch_size"
        )
    total_steps = trainer.epochs * steps_per_epoch
    if trainer.max_steps:
        total_steps = min(total_steps, trainer.max_steps)
    ckpt_path = None
    if info.is_main:
        root = runs_root if runs_root is not None else run_dir.parent
        ckpt_path = resolve_resume(resume, root, LAST, exclude=run_dir)
    ckpt_path = broadcast_object(ckpt_path, info)
    ckpt = load_checkpoint(ckpt_path) if ckpt_path is not None else None
    if ckpt is not None:
        _check_resume_compatible(ckpt, model.size, classes, ckpt_path)

    net = model.build(len(classes))
    if ckpt is None and model.pretrained is not None:
        from fcmae.export import load_pretrained

        enc = load_pretrained(net, model.pretrained, "timm", expect_size=model.size)
        log.info("initialised the encoder from %s (%s); new head", model.pretrained, enc.layout)
    elif ckpt is None:
        log.warning("no pretrained weights (pretrained=null): training from scratch")
    # NOTE: channels-last memory: the depthwise convs' backward is several times faster on
    # CPU (and no slower on GPU); inputs are converted to match in the loop.
    net.to(info.device, memory_format=torch.channels_last)
    peak_lr = optim.lr if optim.lr is not None else scaled_lr(optim.blr, eff_batch)
    opt = build_optimizer(net, optim, peak_lr)
    warmup = schedule.warmup_steps
    if warmup is None:
        warmup = round(schedule.warmup_epochs * steps_per_epoch)
    sched = WarmupCosine(peak_lr, total_steps, warmup, schedule.min_lr)
    ema_model = None
    if ema.enabled:
        from timm.utils import ModelEmaV3

        ema_model = ModelEmaV3(net, decay=ema.decay, use_warmup=ema.warmup)
    step, best = 0, {"metric": trainer.best_metric, "value": -1.0, "step": 0}
    if ckpt is not None:
        net.load_state_dict(ckpt["model"], strict=True)
        opt.load_state_dict(ckpt["optimizer"])
        if ema_model is not None and ckpt.get("ema") is not None:
            ema_model.module.load_state_dict(ckpt["ema"], strict=True)
        step, best = int(ckpt["step"]), dict(ckpt["best"])
        rng = ckpt.get("rng") or []
        if len(rng) == info.world_size:
            restore_rng_state(rng[info.rank])
        else:
            log.warning(
                "checkpoint has RNG states of %d ranks, this job %d", len(rng), info.world_size
            )
        log.info("resumed from %s at step %d", ckpt_path, step)
        del ckpt
    net.train()
    ddp = net
    if info.distributed:
        ddp = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    mixup = build_mixup(aug, len(classes))
    criterion = build_criterion(aug)

    log.info(
        "finetune %s on %s (%d classes, %d train / %d val) | %.2fM params | %d processes x "
        "batch %d x accum %d = %d | %d steps/epoch, %d steps, lr %.3g, layer decay %g "
        "(warm-up %d steps) | run dir %s",
        get_size(model.size).timm_name,
        data.name,
        len(classes),
        len(train_set),
        len(val_set),
        sum(p.numel() for p in net.parameters()) / 1e6,
        info.world_size,
        trainer.batch_size,
        trainer.accum_steps,
        eff_batch,
        steps_per_epoch,
        total_steps,
        peak_lr,
        optim.layer_decay,
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
        "classes": list(classes),
        "total_steps": total_steps,
        "effective_batch": eff_batch,
        "world_size": info.world_size,
        "config": config or {},
    }
    saver = _Checkpointer(run_dir, info, static)
    pin = info.device.type == "cuda"
    losses: list[float] = []
    evals: list[dict[str, float]] = []
    window = {"loss": 0.0, "n": 0}
    stopped_by = None
    progress = Progress(
        total_steps,
        step,
        enabled=info.is_main,
        device=info.device,
        log_every=trainer.log_every,
        desc="finetune",
        bar=trainer.progress_bar,
    )
    metrics = MetricsWriter(
        run_dir / "metrics.jsonl", enabled=info.is_main, sinks=[wandb] if wandb else None
    )

    def run_eval() -> bool:
        """Evaluate model (and EMA) at an epoch end; True when the best metric improved."""
        record = {"train/epoch": step / steps_per_epoch}
        # the unwrapped model: ranks may see different numbers of evaluation batches, and
        # evaluation needs no collective inside the forward
        kw = {"batch_size": trainer.batch_size, "num_workers": data.num_workers}
        results = {"val": evaluate(net, val_set, info, precision=trainer.precision, **kw)}
        if ema_model is not None:
            results["val_ema"] = evaluate(
                ema_model.module, val_set, info, precision=trainer.precision, **kw
            )
        for prefix, res in results.items():
            record.update({f"{prefix}/{k}": v for k, v in res.items()})
        improved = record[trainer.best_metric] > best["value"]
        if improved:
            best.update(value=record[trainer.best_metric], step=step)
        record["best/value"] = best["value"]
        evals.append(record)
        metrics.write(step, record)
        log.info(
            "step %d, epoch %.3g/%d: %s",
            step,
            step / steps_per_epoch,
            math.ceil(total_steps / steps_per_epoch),
            " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "train/epoch"),
        )
        return improved

    try:
        with GracefulStop() as stop:
            while step < total_steps and stopped_by is None:
                epoch, first = divmod(step, steps_per_epoch)
                sampler = StepSampler(
                    len(train_set),
                    steps=steps_per_epoch,
                    batch_size=trainer.batch_size,
                    accum_steps=trainer.accum_steps,
                    world_size=info.world_size,
                    rank=info.rank,
                    seed=trainer.seed,
                    epoch=epoch,
                    start_step=first,
                )
                loader = DataLoader(
                    train_set,
                    batch_size=trainer.batch_size,
                    sampler=sampler,
                    num_workers=data.num_workers,
                    collate_fn=collate_labelled,
                    pin_memory=pin,
                    generator=torch.Generator(),  # keep the global RNG untouched
                )
                batches = iter(loader)
                for _ in range(first, steps_per_epoch):
                    if step >= total_steps:
                        break
                    lr = sched.apply(opt, step)
                    stats = torch.zeros(3, dtype=torch.float64)  # loss, non-finite, stop
                    for micro in range(trainer.accum_steps):
                        imgs, labels = next(batches)  # (B, C, H, W), (B,)
                        imgs = imgs.to(
                            info.device, non_blocking=pin, memory_format=torch.channels_last
                        )
                        labels = labels.to(info.device, non_blocking=pin)
                        if mixup is not None:
                            imgs, labels = mixup(imgs, labels)  # labels: (B, K) soft
                        sync = micro == trainer.accum_steps - 1 or not info.distributed
                        with contextlib.nullcontext() if sync else ddp.no_sync():
                            with autocast_context(trainer.precision, info.device):
                                logits = ddp(imgs)  # (B, K)
                            loss = criterion(logits.float(), labels)
                            (loss / trainer.accum_steps).backward()
                        value = loss.detach().float().item()
                        stats[0] += value / trainer.accum_steps
                        stats[1] += 0.0 if math.isfinite(value) else 1.0
                    stats[2] = float(stop.requested)
                    all_reduce_sum(stats, info)
                    if stats[1] > 0:
                        raise FloatingPointError(
                            f"non-finite loss at step {step + 1}; stopped before the update. "
                            f"Last checkpoint: {saver.last or 'none yet'}. Lower optim.blr, "
                            "set optim.clip_grad, or use precision=fp32"
                        )
                    params = [p for p in net.parameters() if p.grad is not None]
                    norm = torch.nn.utils.clip_grad_norm_(params, optim.clip_grad or math.inf)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    step += 1
                    if ema_model is not None:
                        ema_model.update(net, step=step)
                    step_loss = stats[0].item() / info.world_size
                    losses.append(step_loss)
                    window["loss"] += step_loss
                    window["n"] += 1
                    tp = progress.update(step, eff_batch, loss=step_loss, lr=lr)
                    if step % trainer.log_every == 0 or step == total_steps:
                        metrics.write(
                            step,
                            {
                                "train/loss": window["loss"] / window["n"],
                                "train/lr": lr,
                                "train/grad_norm": norm.item(),
                                "train/epoch": step / steps_per_epoch,
                                "train/img_per_s": tp["img_per_s"],
                                "train/eta_s": tp["eta_s"],
                                "sys/peak_mem_mb": tp["peak_mem_mb"],
                            },
                        )
                        window = {"loss": 0.0, "n": 0}
                    epoch_end = step % steps_per_epoch == 0 or step == total_steps
                    if epoch_end:
                        improved = run_eval()
                        saver.save(
                            ddp, ema_model, opt, step, step / steps_per_epoch, best, improved
                        )
                        progress.reset_timer()
                    elif trainer.ckpt_every and step % trainer.ckpt_every == 0:
                        saver.save(ddp, ema_model, opt, step, step / steps_per_epoch, best, False)
                    if stats[2] > 0:
                        stopped_by = stop.signal_name or "signal on another rank"
                    elif trainer.stop_at is not None and step >= trainer.stop_at:
                        stopped_by = f"trainer.stop_at={trainer.stop_at}"
                    if stopped_by is not None:
                        break
                del batches, loader
            if saver.last_step != step:
                saver.save(ddp, ema_model, opt, step, step / steps_per_epoch, best, False)
        if stopped_by is not None:
            log.warning(
                "stopped by %s at step %d/%d; resume with resume=%s",
                stopped_by,
                step,
                total_steps,
                run_dir,
            )
    finally:
        progress.close()
        metrics.close()
        if wandb is not None:
            wandb.finish()
    return FinetuneResult(
        step,
        step // steps_per_epoch,
        losses,
        evals,
        best,
        saver.last,
        saver.best,
        stopped_by,
        net,
    )


def finetune_from_spec(
    spec: FinetuneSpec, run_dir: str | Path, config: dict[str, Any] | None = None
) -> FinetuneResult:
    """:func:`finetune` with the settings of a :class:`FinetuneSpec`."""
    return finetune(
        spec.model,
        spec.data,
        spec.aug,
        spec.optim,
        spec.schedule,
        spec.ema,
        spec.trainer,
        spec.logger,
        run_dir=run_dir,
        resume=spec.resume,
        runs_root=spec.runs_root,
        config=config,
    )


def load_finetuned(path: str | Path, use_ema: bool = False) -> tuple[nn.Module, list[str]]:
    """A finetuned timm classifier and its class names from an ``fcmae-finetune`` checkpoint."""
    ckpt = load_checkpoint(path)
    if ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not an fcmae-finetune checkpoint")
    model = ClassifierSpec(size=ckpt["size"]).build(len(ckpt["classes"]))
    weights = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    model.load_state_dict(weights, strict=True)
    return model.eval(), list(ckpt["classes"])


__all__ = [
    "BEST",
    "LAST",
    "ClassifierSpec",
    "EmaSpec",
    "FinetuneOptimSpec",
    "FinetuneResult",
    "FinetuneScheduleSpec",
    "FinetuneSpec",
    "FinetuneTrainerSpec",
    "LoggerSpec",
    "build_criterion",
    "build_mixup",
    "build_optimizer",
    "evaluate",
    "finetune",
    "finetune_from_spec",
    "load_finetuned",
    "specs_from_config",
]
