"""Optional Weights & Biases sink: config, metrics and images, offline unless told otherwise.

``wandb`` is imported only when a :class:`WandbLogger` is created. In ``offline`` mode runs are
kept under ``<run_dir>/wandb`` and can be uploaded later with ``wandb sync``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MODES = ("offline", "online", "disabled")
LOGGERS = ("none", "wandb")


@dataclass(frozen=True)
class LoggerSpec:
    """The ``logger`` config group of every job: ``none`` (JSON lines only) or ``wandb``."""

    name: str = "none"
    project: str = "fcmae"
    mode: str = "offline"
    entity: str | None = None
    run_name: str | None = None
    tags: tuple[str, ...] = ()

    @classmethod
    def read(cls, r) -> LoggerSpec:
        """From a :class:`fcmae.engine.config_reader.ConfigReader` over the job's config."""
        return cls(
            name=r.choice("logger.name", LOGGERS, "none"),
            project=str(r.get("logger.project", "fcmae")),
            mode=r.choice("logger.mode", MODES, "offline"),
            entity=r.get("logger.entity"),
            run_name=r.get("logger.run_name"),
            tags=tuple(r.get("logger.tags") or ()),
        )


class WandbLogger:
    """A metrics sink (``logger(record, step)``) plus :meth:`log_image` and :meth:`finish`."""

    def __init__(
        self,
        run_dir: str | Path,
        config: dict[str, Any],
        *,
        project: str,
        mode: str = "offline",
        entity: str | None = None,
        name: str | None = None,
        tags: list[str] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown wandb mode {mode!r}; expected one of: {', '.join(MODES)}")
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            project=project,
            entity=entity,
            name=name,
            tags=list(tags or []),
            mode=mode,
            dir=str(run_dir),
            config=config,
        )
        log.info("wandb run %s (mode=%s)", self.run.name, mode)

    def __call__(self, record: dict[str, Any], step: int) -> None:
        values = {k: v for k, v in record.items() if "/" in k and isinstance(v, int | float)}
        self.run.log(values, step=step)

    def log_image(self, key: str, image: np.ndarray, step: int, caption: str = "") -> None:
        """``image``: ``(H, W, 3)`` uint8."""
        self.run.log({key: self._wandb.Image(image, caption=caption)}, step=step)

    def finish(self) -> None:
        self.run.finish()
