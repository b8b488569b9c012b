"""The FCMAE pretraining loop, one process per device (``torchrun``) or a single process.

Randomness that decides *what* is trained on (sample order, crops, masks) is drawn from
generators seeded by (seed, epoch or step, global sample index), so a resumed run and a run
split over N processes see exactly the same samples, crops and masks as one uninterrupted
single-process run with the same global batch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fcmae.convert import dense_to_sparse, sparse_to_dense
from fcmae.data import DataSpec, StepSampler, build_dataset, build_loader, epoch_length, mask_seed
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
from fcmae.engine.distributed import DistInfo, all_gather_object, all_reduce_sum, broadcast_object
from fcmae.engine.repro import derive_seed
from fcmae.masking import random_mask
from fcmae.model import FCMAE
from fcmae.pretrain.config import (
    CHECKPOINT,
    LoggerSpec,
    ModelSpec,
    OptimSpec,
    PretrainSpec,
    ScheduleSpec,
    TrainerSpec,
)

log = logging.getLogger(__name__)

FORMAT = "fcmae-pretrain/1"
# Parameters without weight decay besides 1-D ones (norms, biases): GRN and the mask token.
NO_DECAY_KEYWORDS = ("bias", "gamma", "beta", "mask_token")
RECON_STREAM = 4  # derive_seed tag for the fixed images of the reconstruction picture


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped before applying that update."""


@dataclass
class PretrainResult:
    step: int
    losses: list[float]  # global mean loss of every step this process ran
    checkpoint: Path | None
    stopped_by: str | None  # None: ran to the end (or to trainer.stop_at); else the signal
    model: FCMAE


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
        self.last_step = step  # on every rank: the final save must be skipped (or not) by all
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
        self.last_saved = self.path
        log.info("saved %s at step %d (%.1fs)", self.path, step, time.perf_counter() - t0)


class _Pictures:
    """Reconstruction pictures of a few fixed crops (main process only)."""

    def __init__(self, dataset, spec: PretrainSpec, run_dir: Path, wandb) -> None:
        n, count = len(dataset), spec.trainer.recon_images
        keys = [(i % n, derive_seed(spec.trainer.seed, RECON_STREAM, i)) for i in range(count)]
        self.imgs = torch.stack([dataset[k][0] for k in keys])  # (count, C, H, W)
        self.spec, self.run_dir, self.wandb = spec, run_dir, wandb

    def write(self, model, step: int) -> None:
        from fcmae.visualize import reconstruction_grid, save_png

        m = _unwrap(model)
        dev = next(m.parameters()).device
        grid = (self.imgs.shape[-2] // m.patch_size, self.imgs.shape[-1] // m.patch_size)
        mask = sample_masks(len(self.imgs), grid, m.mask_ratio, self.spec.trainer.seed, -1, 0)
        data = self.spec.data
        picture = reconstruction_grid(m, self.imgs.to(dev), mask.to(dev), data.mean, data.std)
        path = save_png(picture, self.run_dir / "reconstruction.png")
        if self.spec.trainer.recon_every:
            save_png(picture, self.run_dir / "reconstructions" / f"step{step:07d}.png")
        if self.wandb is not None:
            self.wandb.log_image("train/reconstruction", picture, step, caption=f"step {step}")
        log.info("wrote %s", path)


def _check_resume_compatible(ckpt: dict, spec: PretrainSpec, path: Path) -> None:
    if ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not an fcmae-pretrain checkpoint ({ckpt.get('format')})")
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


def _restore(ckpt: dict, net: FCMAE, opt, info: DistInfo, eff_batch: int) -> tuple[int, dict]:
    """Load model, optimiser and this rank's RNG state; return (step, counters)."""
    _load_model_state(net, ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    rng = ckpt.get("rng") or []
    if len(rng) == info.world_size:
        restore_rng_state(rng[info.rank])
    else:
        log.warning("checkpoint holds RNG states of %d ranks, this job has %d: not restored",
                    len(rng), info.world_size)  # fmt: skip
    if ckpt.get("effective_batch") != eff_batch:
        log.warning("effective batch changed from %s to %d: the sample order differs",
                    ckpt.get("effective_batch"), eff_batch)  # fmt: skip
    return int(ckpt["step"]), dict(ckpt.get("counters", {}))


def _train_step(ddp, batches, step: int, spec: PretrainSpec, info: DistInfo, stop) -> Tensor:
    """Forward/backward over ``accum_steps`` micro-batches (no optimiser step).

    Returns the global sums over ranks ``[loss, non-finite count, stop requests, skipped
    images, visible fraction]`` from one small all-reduce.
    """
    t, m = spec.trainer, spec.model
    grid = (spec.data.input_size[0] // m.patch_size, spec.data.input_size[1] // m.patch_size)
    stats = torch.zeros(5, dtype=torch.float64)
    for micro in range(t.accum_steps):
        imgs, skipped = next(batches)  # imgs: (B, C, H, W)
        imgs = imgs.to(info.device, non_blocking=True)
        first = (micro * info.world_size + info.rank) * t.batch_size  # global sample index
        mask = sample_masks(len(imgs), grid, m.mask_ratio, t.seed, step, first)  # (B, gh, gw)
        mask = mask.to(info.device)
        sync = micro == t.accum_steps - 1 or not info.distributed
        with contextlib.nullcontext() if sync else ddp.no_sync():
            with autocast_context(t.precision, info.device):
                loss, _, _ = ddp(imgs, mask)
            (loss / t.accum_steps).backward()
        value = loss.detach().float().item()
        stats[0] += value / t.accum_steps
        stats[1] += 0.0 if math.isfinite(value) else 1.0
        stats[3] += float(skipped)
        stats[4] += (1.0 - mask.mean().item()) / t.accum_steps
    stats[2] = float(stop.requested)
    return all_reduce_sum(stats, info)


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
    ``runs_root``, other than ``run_dir``), or a checkpoint file / run directory. ``config``
    is only recorded (``config.yaml``, checkpoint, wandb). Raises :class:`NonFiniteLossError`
    if the loss stops being finite: that update is not applied and the last checkpoint stays.
    """
    spec = PretrainSpec(model, data, optim, schedule, trainer, logger, resume, None)
    run_dir = Path(run_dir)
    info = init_distributed(trainer.device)
    setup_logging(info.rank, info.world_size, run_dir if info.is_main else None)
    check_precision(trainer.precision, model.engine == "dense", "engine=sparse (fp32 only)")
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
    step, counters = 0, {"data/skipped_images": 0}
    if ckpt is not None:
        step, saved_counters = _restore(ckpt, net, opt, info, eff_batch)
        counters.update(saved_counters)
        log.info("resumed from %s at step %d", ckpt_path, step)
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
    log.info(
        "FCMAE-%s, engine=%s, %.2fM params | %d process(es) x batch %d x accum %d = %d | "
        "%d steps/epoch, %d steps, lr %.3g, warm-up %d steps | run dir %s",
        model.size, model.engine, sum(p.numel() for p in net.parameters()) / 1e6,
        info.world_size, trainer.batch_size, trainer.accum_steps, eff_batch,
        steps_per_epoch, total_steps, peak_lr, warmup, run_dir,
    )  # fmt: skip

    wandb = None
    if info.is_main:
        if config is not None:
            from omegaconf import OmegaConf

            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
        if logger.name == "wandb":
            from fcmae.engine.wandb_logger import WandbLogger

            wandb = WandbLogger(
                run_dir, config or {}, project=logger.project, mode=logger.mode,
                entity=logger.entity, name=logger.run_name, tags=list(logger.tags),
            )  # fmt: skip
    checkpointer = _Checkpointer(run_dir, info, {
        "format": FORMAT,
        "size": model.size,
        "engine": model.engine,
        "model_spec": asdict(model),
        "data_spec": {"input_size": list(data.input_size), "mean": list(data.mean),
                      "std": list(data.std)},
        "total_steps": total_steps,
        "effective_batch": eff_batch,
        "world_size": info.world_size,
        "schedule": sched.state_dict(),
        "config": config or {},
    })  # fmt: skip
    pictures = None
    if info.is_main and trainer.recon_images:
        pictures = _Pictures(dataset, spec, run_dir, wandb)
    progress = Progress(
        total_steps, step, enabled=info.is_main, device=info.device,
        log_every=trainer.log_every, desc="pretrain", bar=trainer.progress_bar,
    )  # fmt: skip
    metrics = MetricsWriter(
        run_dir / "metrics.jsonl", enabled=info.is_main, sinks=[wandb] if wandb else None
    )
    params = [p for p in net.parameters() if p.requires_grad]
    losses: list[float] = []
    window = torch.zeros(3, dtype=torch.float64)  # loss sum, visible fraction sum, steps
    stopped_by = None
    try:
        with GracefulStop() as stop:
            while step < end_step and stopped_by is None:
                epoch, first = divmod(step, steps_per_epoch)
                sampler = StepSampler(
                    len(dataset), steps=steps_per_epoch, batch_size=trainer.batch_size,
                    accum_steps=trainer.accum_steps, world_size=info.world_size,
                    rank=info.rank, seed=trainer.seed, epoch=epoch, start_step=first,
                )  # fmt: skip
                pin = info.device.type == "cuda"
                batches = iter(build_loader(dataset, sampler, data.num_workers, pin))
                for _ in range(first, steps_per_epoch):
                    if step >= end_step:
                        break
                    lr = sched.apply(opt, step)
                    stats = _train_step(ddp, batches, step, spec, info, stop)
                    if stats[1] > 0:
                        raise NonFiniteLossError(
                            f"non-finite loss at step {step + 1}; stopped before applying the "
                            "update. Last good checkpoint: "
                            f"{checkpointer.last_saved or 'none written yet'} (left untouched). "
                            "Lower optim.blr, set optim.clip_grad, or use precision=fp32"
                        )
                    norm = torch.nn.utils.clip_grad_norm_(params, optim.clip_grad or math.inf)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    step += 1
                    loss = stats[0].item() / info.world_size
                    losses.append(loss)
                    counters["data/skipped_images"] += int(stats[3].item())
                    window += torch.tensor([loss, stats[4].item() / info.world_size, 1.0])
                    speed = progress.update(step, eff_batch, loss=loss, lr=lr)
                    if step % trainer.log_every == 0 or step == end_step:
                        n = window[2].item()
                        metrics.write(step, {
                            "train/loss": window[0].item() / n,
                            "train/lr": lr,
                            "train/grad_norm": norm.item(),
                            "train/visible_fraction": window[1].item() / n,
                            "train/epoch": step / steps_per_epoch,
                            "train/img_per_s": speed["img_per_s"],
                            "train/eta_s": speed["eta_s"],
                            "sys/peak_mem_mb": speed["peak_mem_mb"],
                            **counters,
                        })  # fmt: skip
                        window.zero_()
                    if stats[2] > 0:
                        stopped_by = stop.signal_name or "a signal to another rank"
                        break
                    keep = bool(trainer.keep_every) and step % trainer.keep_every == 0
                    if (trainer.ckpt_every and step % trainer.ckpt_every == 0) or keep:
                        checkpointer.save(ddp, opt, step, step / steps_per_epoch, counters, keep)
                        progress.reset_timer()
                    due = trainer.recon_every and step % trainer.recon_every == 0
                    if pictures is not None and due and step < end_step:
                        pictures.write(ddp, step)
                del batches
            if checkpointer.last_step != step:
                checkpointer.save(ddp, opt, step, step / steps_per_epoch, counters)
        if stopped_by is not None:
            log.warning("stopped by %s at step %d/%d; continue with resume=%s",
                        stopped_by, step, total_steps, run_dir)  # fmt: skip
        elif pictures is not None:
            pictures.write(ddp, step)
    finally:
        progress.close()
        metrics.close()
        if wandb is not None:
            wandb.finish()
    return PretrainResult(step, losses, checkpointer.last_saved, stopped_by, net)


def pretrain_from_spec(
    spec: PretrainSpec, run_dir: str | Path, config: dict[str, Any] | None = None
) -> PretrainResult:
    """:func:`pretrain` with the settings of a :class:`PretrainSpec`."""
    return pretrain(
        spec.model, spec.data, spec.optim, spec.schedule, spec.trainer, spec.logger,
        run_dir=run_dir, resume=spec.resume, runs_root=spec.runs_root, config=config,
    )  # fmt: skip
