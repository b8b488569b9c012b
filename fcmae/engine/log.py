"""Rank-aware ``logging`` configuration for jobs.

Rank 0 logs at the requested level to the console and, when a run directory is given, to
``<run_dir>/train.log``; other ranks log warnings and errors only, prefixed with their rank,
so a multi-process job prints each message once.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname).1s %(name)s%(rank)s: %(message)s"
_DATEFMT = "%H:%M:%S"


class _RankFilter(logging.Filter):
    def __init__(self, rank: int, world_size: int) -> None:
        super().__init__()
        self.tag = f" [rank {rank}]" if world_size > 1 else ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.tag
        return True


def setup_logging(
    rank: int = 0,
    world_size: int = 1,
    run_dir: str | Path | None = None,
    level: str | int = "INFO",
    log_file: str = "train.log",
) -> logging.Logger:
    """Configure the root logger for this process and return it.

    Replaces handlers installed by an earlier call (so tests and repeated jobs in one process
    do not duplicate lines). Only rank 0 writes ``run_dir/log_file``.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_fcmae_engine", False):
            root.removeHandler(h)
            h.close()
    level_no = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(level_no, int):
        raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING or ERROR")
    effective = level_no if rank == 0 else max(level_no, logging.WARNING)
    fmt = logging.Formatter(_FORMAT, _DATEFMT)
    rank_filter = _RankFilter(rank, world_size)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None and rank == 0:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(run_dir) / log_file))
    for h in handlers:
        h.setFormatter(fmt)
        h.addFilter(rank_filter)
        h._fcmae_engine = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(effective)
    return root
