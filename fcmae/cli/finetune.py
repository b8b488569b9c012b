"""``fcmae-finetune``: finetune a pretrained ConvNeXt V2 (timm), configured by Hydra.

    fcmae-finetune                                       # digits, atto, from scratch
    fcmae-finetune pretrained=runs/export/atto.safetensors
    fcmae-finetune pretrained=runs/pretrain/<run>/checkpoint.pt data=imagefolder data.root=DIR
    torchrun --nproc_per_node 8 -m fcmae.cli.finetune experiment=in1k_tiny data.root=... \\
        pretrained=tiny.safetensors

The job's own groups live in ``conf/finetune/`` (``finetune/data``, ``finetune/aug``, ...);
``data=X`` on the command line is short for ``finetune/data=X`` (likewise ``aug``, ``optim``,
``schedule``, ``experiment``, ``debug``). Prints one JSON line with the run directory, the
checkpoints and the accuracies to stdout.
"""

from __future__ import annotations

import json
import os
import re
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from fcmae.cli import CONF_DIR, HYDRA_VERSION_BASE, run_hydra_job
from fcmae.engine.distributed import teardown_distributed
from fcmae.finetune import finetune_from_spec, specs_from_config

PROG = "fcmae-finetune"
GROUPS = ("data", "aug", "optim", "schedule", "experiment", "debug")
_PACKAGED = ("data", "aug", "optim", "schedule")  # listed as finetune/<g>@<g> in the defaults
_SHORT = re.compile(rf"^(?P<op>~|\+\+|\+)?(?P<group>{'|'.join(GROUPS)})(?P<rest>(@[^=]*)?(=.*)?)$")


def expand_overrides(args: list[str]) -> list[str]:
    """``data=imagefolder`` -> ``finetune/data@data=imagefolder`` (also ``+``, ``~``).

    Keys inside a group (``data.root=...``) and every other argument pass unchanged.
    """
    out = []
    for a in args:
        m = _SHORT.match(a)
        if m is None:
            out.append(a)
            continue
        group, rest = m["group"], m["rest"]
        if group in _PACKAGED and not rest.startswith("@"):
            rest = f"@{group}{rest}"
        out.append(f"{m['op'] or ''}finetune/{group}{rest}")
    return out


@hydra.main(config_path=str(CONF_DIR), config_name="finetune", version_base=HYDRA_VERSION_BASE)
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    config = OmegaConf.to_container(cfg, resolve=True)
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        spec = specs_from_config(config)
        result = finetune_from_spec(spec, run_dir, config)
    except (ValueError, FloatingPointError) as err:
        sys.stderr.write(f"{PROG}: error: {err}\n")
        raise SystemExit(2 if isinstance(err, ValueError) else 1) from None
    finally:
        teardown_distributed()
    if os.environ.get("RANK", "0") == "0":
        last = result.evals[-1] if result.evals else {}
        summary = {
            "run_dir": run_dir,
            "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
            "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
            "step": result.step,
            "val/top1": last.get("val/top1"),
            "val/top5": last.get("val/top5"),
            "val_ema/top1": last.get("val_ema/top1"),
            "best": result.best,
            "stopped_by": result.stopped_by,
        }
        print(json.dumps(summary))  # the CLI's one-line result


def main() -> None:
    sys.argv[1:] = expand_overrides(sys.argv[1:])
    run_hydra_job(PROG, "finetune", _hydra_main, specs_from_config)


if __name__ == "__main__":
    main()
