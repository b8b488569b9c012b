"""Job utilities shared by every training entry point (pretraining, finetuning, benchmarks).

Nothing here knows about FCMAE or ConvNeXt: each module is a small, general building block.

* :mod:`~fcmae.engine.config_reader` - typed config reads with one-line errors;
* :mod:`~fcmae.engine.log` - rank-aware ``logging`` setup (console + ``train.log``);
* :mod:`~fcmae.engine.metrics` - JSON-lines metrics writer (``metrics.jsonl``, slash keys);
* :mod:`~fcmae.engine.progress` - progress reporting with images/s, ETA and peak memory;
* :mod:`~fcmae.engine.checkpoint` - atomic save/load and resume resolution;
* :mod:`~fcmae.engine.rng` - RNG state capture/restore (python, numpy, torch, CUDA);
* :mod:`~fcmae.engine.repro` - seeding, derived per-sample seeds, deterministic mode;
* :mod:`~fcmae.engine.distributed` - torchrun-style init/teardown and small collectives;
* :mod:`~fcmae.engine.optim` - weight-decay param groups, lr scaling, warm-up + cosine;
* :mod:`~fcmae.engine.precision` - fp32 / bf16 autocast selection;
* :mod:`~fcmae.engine.signals` - SIGINT/SIGTERM turned into a "stop after this step" flag;
* :mod:`~fcmae.engine.wandb_logger` - optional Weights & Biases sink (offline by default).
"""

from fcmae.engine.checkpoint import (
    atomic_save,
    find_latest_checkpoint,
    load_checkpoint,
    resolve_resume,
)
from fcmae.engine.config_reader import ConfigReader
from fcmae.engine.distributed import DistInfo, init_distributed, teardown_distributed
from fcmae.engine.log import setup_logging
from fcmae.engine.metrics import MetricsWriter
from fcmae.engine.optim import WarmupCosine, param_groups, scaled_lr
from fcmae.engine.precision import autocast_context, check_precision
from fcmae.engine.progress import Progress, peak_memory_mb
from fcmae.engine.repro import configure_determinism, derive_seed, seed_everything
from fcmae.engine.rng import capture_rng_state, restore_rng_state
from fcmae.engine.signals import GracefulStop

__all__ = [
    "ConfigReader",
    "DistInfo",
    "GracefulStop",
    "MetricsWriter",
    "Progress",
    "WarmupCosine",
    "atomic_save",
    "autocast_context",
    "capture_rng_state",
    "check_precision",
    "configure_determinism",
    "derive_seed",
    "find_latest_checkpoint",
    "init_distributed",
    "load_checkpoint",
    "param_groups",
    "peak_memory_mb",
    "resolve_resume",
    "restore_rng_state",
    "scaled_lr",
    "seed_everything",
    "setup_logging",
    "teardown_distributed",
]
