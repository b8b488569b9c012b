"""FCMAE pretraining: typed settings (:mod:`.config`) and the loop (:mod:`.loop`).

    spec = specs_from_config(plain_config_dict)      # ValueError (one line) if anything is off
    result = pretrain_from_spec(spec, run_dir="runs/pretrain/mine")

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

from fcmae.pretrain.config import (
    CHECKPOINT,
    LoggerSpec,
    ModelSpec,
    OptimSpec,
    PretrainSpec,
    ScheduleSpec,
    TrainerSpec,
    specs_from_config,
)
from fcmae.pretrain.loop import (
    FORMAT,
    NonFiniteLossError,
    PretrainResult,
    pretrain,
    pretrain_from_spec,
    sample_masks,
)

__all__ = [
    "CHECKPOINT",
    "FORMAT",
    "LoggerSpec",
    "ModelSpec",
    "NonFiniteLossError",
    "OptimSpec",
    "PretrainResult",
    "PretrainSpec",
    "ScheduleSpec",
    "TrainerSpec",
    "pretrain",
    "pretrain_from_spec",
    "sample_masks",
    "specs_from_config",
]
