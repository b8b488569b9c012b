"""``fcmae-pretrain``: FCMAE pretraining, configured by Hydra (``conf/pretrain.yaml``).

    fcmae-pretrain                                  # quickstart: atto, sparse, 2 CPU cores
    fcmae-pretrain experiment=in1k_base data.root=/data/imagenet/train
    torchrun --nproc_per_node 8 -m fcmae.cli.pretrain experiment=in1k_base data.root=...

Prints one JSON line with the run directory, checkpoint, final step and loss to stdout.
"""

from __future__ import annotations

import json
import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from fcmae.cli import CONF_DIR, HYDRA_VERSION_BASE, run_hydra_job
from fcmae.engine.distributed import teardown_distributed
from fcmae.pretrain import NonFiniteLossError, pretrain_from_spec, specs_from_config

PROG = "fcmae-pretrain"


@hydra.main(config_path=str(CONF_DIR), config_name="pretrain", version_base=HYDRA_VERSION_BASE)
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    config = OmegaConf.to_container(cfg, resolve=True)
    try:
        spec = specs_from_config(config)
        result = pretrain_from_spec(spec, HydraConfig.get().runtime.output_dir, config)
    except (ValueError, NonFiniteLossError) as err:
        sys.stderr.write(f"{PROG}: error: {err}\n")
        raise SystemExit(2 if isinstance(err, ValueError) else 1) from None
    finally:
        teardown_distributed()
    if os.environ.get("RANK", "0") == "0":  # one summary line per job, from rank 0
        summary = {
            "run_dir": HydraConfig.get().runtime.output_dir,
            "checkpoint": str(result.checkpoint) if result.checkpoint else None,
            "step": result.step,
            "train/loss": result.losses[-1] if result.losses else None,
            "stopped_by": result.stopped_by,
        }
        print(json.dumps(summary))  # the CLI's one-line result


def main() -> None:
    run_hydra_job(PROG, "pretrain", _hydra_main, specs_from_config)


if __name__ == "__main__":
    main()
