"""``fcmae-bench``: sparse vs dense FCMAE engines, configured by Hydra (``conf/bench.yaml``).

    fcmae-bench                                   # preset=quick: atto + tiny, 2 CPU cores
    fcmae-bench preset=full
    fcmae-bench preset=quick repeats=5 'phases=[train_step]' grids.tiny.batches=[8,16]
    fcmae-bench preset=debug logger=wandb

Writes results.{csv,json,md}, metrics.jsonl, meta.json and PNG plots into the run directory
(``runs/bench/<time>``) and prints one JSON line naming it. Presets are the files in
``conf/bench/``, registered as the ``preset`` group.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from fcmae.bench.config import BenchSettings, grid_from_mapping, validate

PROG = "fcmae-bench"
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # conf/ at the repo root (editable)
PRESET_DIR = CONF_DIR / "bench"
VERSION_BASE = "1.3"


def register_presets() -> None:
    """Each ``conf/bench/<name>.yaml`` becomes option ``<name>`` of the global ``preset`` group."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        cs.store(group="preset", name=path.stem, node=OmegaConf.load(path), package="_global_")


def settings_from_config(cfg: Mapping[str, Any], command: str = "") -> BenchSettings:
    """The typed settings of a composed config (plain dict); ValueError on a bad value."""
    grids = cfg.get("grids") or {}
    if not isinstance(grids, Mapping):
        raise ValueError("grids must be a mapping of named grids (see conf/bench.yaml)")
    settings = BenchSettings(
        grids={str(name): grid_from_mapping(str(name), raw) for name, raw in grids.items()},
        phases=tuple(cfg["phases"]),
        engines=tuple(cfg["engines"]),
        warmup=int(cfg["warmup"]),
        repeats=int(cfg["repeats"]),
        seed=int(cfg["seed"]),
        device=str(cfg["device"]),
        threads=None if cfg.get("threads") is None else int(cfg["threads"]),
        memory=bool(cfg["memory"]),
        memory_timeout_s=float(cfg["memory_timeout_s"]),
        plots=bool(cfg["plots"]),
        lr=float(cfg["lr"]),
        patch_size=int(cfg["patch_size"]),
        command=command,
    )
    validate(settings)
    return settings


def _preflight(overrides: list[str]) -> None:
    """Compose and validate before Hydra makes a run directory: one line on a bad config."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base=VERSION_BASE):
            cfg = compose("bench", overrides=overrides)
            settings_from_config(OmegaConf.to_container(cfg, resolve=True))
    except ValueError:
        raise
    except Exception as err:  # Hydra/OmegaConf errors: keep their first line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if "preset/" in first and "Could not find" in first:
            options = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
            first = f"unknown preset; choose one of: {options}"
        raise ValueError(first) from err
    finally:
        GlobalHydra.instance().clear()


@hydra.main(config_path=str(CONF_DIR), config_name="bench", version_base=VERSION_BASE)
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from fcmae.bench.report import log_to_wandb
    from fcmae.bench.runner import run_bench
    from fcmae.engine.log import setup_logging

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    command = " ".join([PROG, *HydraConfig.get().overrides.task])
    setup_logging(run_dir=run_dir, log_file="bench.log")
    try:
        settings = settings_from_config(config, command)
        records = run_bench(settings, run_dir)
    except (ValueError, ImportError) as err:
        sys.stderr.write(f"{PROG}: error: {err}\n")
        raise SystemExit(2) from None
    logger = config.get("logger") or {}
    if logger.get("name") == "wandb":
        log_to_wandb(records, run_dir, config, logger)
    print(json.dumps({"run_dir": str(run_dir), "records": len(records)}))  # one-line result


def main(argv: list[str] | None = None) -> None:
    register_presets()
    if argv is not None:
        sys.argv = [PROG, *argv]
    args = sys.argv[1:]
    if not any(a.startswith("-") for a in args):  # --help, --cfg, -m ... go to Hydra as is
        try:
            _preflight(args)
        except ValueError as err:
            sys.stderr.write(f"{PROG}: error: {err}\n")
            raise SystemExit(2) from None
    _hydra_main()


if __name__ == "__main__":
    main()
