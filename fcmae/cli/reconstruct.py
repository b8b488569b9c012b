"""``fcmae-reconstruct``: a PNG grid of what a pretrained FCMAE makes of masked images.

    fcmae-reconstruct checkpoint=runs/pretrain/<run>/checkpoint.pt
    fcmae-reconstruct checkpoint=<run dir> images=[a.jpg,b.jpg] out=grid.png mask_ratio=0.75
    fcmae-reconstruct checkpoint=<run dir> engine=sparse

Prints the written path to stdout.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from fcmae.cli import CONF_DIR, HYDRA_VERSION_BASE, run_hydra_job
from fcmae.engine.distributed import DEVICES
from fcmae.engine.log import setup_logging
from fcmae.model import ENGINES
from fcmae.pretrain import CHECKPOINT

PROG = "fcmae-reconstruct"


def validate(cfg: Mapping) -> dict:
    """Check the settings; one-line ValueError. Returns ``reconstruct_checkpoint`` kwargs."""
    ckpt = cfg.get("checkpoint")
    if ckpt in (None, "???", ""):
        raise ValueError(f"checkpoint is required: {PROG} checkpoint=runs/pretrain/<run>")
    path = Path(ckpt)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise ValueError(f"checkpoint={ckpt}: no such file; pass an fcmae-pretrain checkpoint.pt")
    images = cfg.get("images") or None
    if isinstance(images, str):
        images = [images]
    for img in images or []:
        if not Path(img).is_file():
            raise ValueError(f"images: {img} does not exist")
    size = cfg.get("input_size")
    if isinstance(size, int):
        size = (size, size)
    if size is not None and (len(size) != 2 or any(int(s) <= 0 for s in size)):
        raise ValueError(f"input_size must be a positive int or [h, w], got {size}")
    num = cfg.get("num_images", 4)
    if not isinstance(num, int) or num < 1:
        raise ValueError(f"num_images must be a positive integer, got {num!r}")
    ratio = cfg.get("mask_ratio")
    if ratio is not None and not 0 <= ratio < 1:
        raise ValueError(f"mask_ratio must be in [0, 1), got {ratio}")
    engine = (cfg.get("engine") or {}).get("name")
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}; choose one of: {', '.join(ENGINES)}")
    if cfg.get("device") not in DEVICES[1:]:
        raise ValueError(f"device={cfg.get('device')!r}; choose cpu or cuda")
    return {
        "checkpoint": path,
        "out": cfg.get("out") or "reconstruction.png",
        "images": images,
        "num_images": num,
        "input_size": tuple(size) if size is not None else None,
        "mask_ratio": ratio,
        "engine": engine,
        "seed": int(cfg.get("seed", 0)),
        "device": cfg["device"],
    }


@hydra.main(config_path=str(CONF_DIR), config_name="reconstruct", version_base=HYDRA_VERSION_BASE)
def _hydra_main(cfg: DictConfig) -> None:
    from fcmae.visualize import reconstruct_checkpoint

    setup_logging()
    try:
        kwargs = validate(OmegaConf.to_container(cfg, resolve=True))
        path = reconstruct_checkpoint(**kwargs)
    except ValueError as err:
        sys.stderr.write(f"{PROG}: error: {err}\n")
        raise SystemExit(2) from None
    print(path)  # the CLI's one-line result


def main() -> None:
    run_hydra_job(PROG, "reconstruct", _hydra_main, validate)


if __name__ == "__main__":
    main()
