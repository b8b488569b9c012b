"""Metrics as JSON lines: one object per record, slash-named keys (``train/loss``).

Every record carries ``step`` (the optimiser step) and ``time`` (unix seconds). Only the main
process writes; elsewhere :class:`MetricsWriter` accepts and drops records, so call sites need
no rank checks. Extra sinks (e.g. Weights & Biases) receive the same records.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

Sink = Callable[[dict[str, Any], int], None]


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible as strings
    return value


class MetricsWriter:
    """Append-only ``metrics.jsonl`` writer; flushed after every record."""

    def __init__(
        self, path: str | Path | None, enabled: bool = True, sinks: list[Sink] | None = None
    ) -> None:
        self.enabled = enabled and path is not None
        self.sinks = list(sinks or [])
        self.path = Path(path) if path is not None else None
        self._file = None
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record ``metrics`` at optimiser step ``step``; keys must look like ``group/name``."""
        bad = [k for k in metrics if "/" not in k]
        if bad:
            raise ValueError(f"metric keys must be slash-named like 'train/loss', got {bad}")
        if not self.enabled:
            return
        record = {"step": int(step), "time": round(time.time(), 3)}
        record.update({k: _plain(v) for k, v in metrics.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for sink in self.sinks:
            sink(record, int(step))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file, in order."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
