"""Typed reads from a composed config (a plain nested dict), with one-line errors.

Every job turns its Hydra config into typed settings before any work starts; each read checks
type and range and raises ``ValueError("<dotted.key> must be ..., got ...")``.

    r = ConfigReader(cfg)
    batch = r.int("trainer.batch_size", 64)             # >= 1
    lr = r.float("optim.lr", None, optional=True)       # None allowed
    size = r.pair("data.input_size", 224, kind=int, scalar=True)   # 224 -> (224, 224)
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Iterable, Mapping
from typing import Any

MISSING = "???"  # OmegaConf's mandatory-value marker, kept by to_container(resolve=True)


class ConfigReader:
    def __init__(self, cfg: Mapping) -> None:
        self.cfg = cfg

    def get(self, dotted: str, default: Any = None) -> Any:
        """The value at ``a.b.c``, or ``default`` if absent or still ``???``."""
        node: Any = self.cfg
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return default if node == MISSING else node

    def int(self, key: str, default: Any = None, *, low: int = 1, optional: bool = False):
        """An integer ``>= low`` (booleans rejected); None if ``optional`` and unset."""
        value = self.get(key, default)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, builtins.int) or value < low:
            what = "a positive integer" if low == 1 else f"an integer >= {low}"
            raise ValueError(f"{key} must be {what}, got {value!r}")
        return value

    def float(
        self,
        key: str,
        default: Any = None,
        *,
        low: builtins.float = 0.0,
        high: builtins.float = math.inf,
        optional: bool = False,
    ):
        """A number in ``[low, high]`` as float; None if ``optional`` and unset."""
        value = self.get(key, default)
        if value is None and optional:
            return None
        number = isinstance(value, builtins.int | builtins.float) and not isinstance(value, bool)
        if not number or not low <= value <= high:
            raise ValueError(f"{key} must be a number in [{low}, {high}], got {value!r}")
        return builtins.float(value)

    def choice(self, key: str, choices: Iterable[str], default: Any = None) -> Any:
        """One of ``choices``."""
        choices = tuple(choices)
        value = self.get(key, default)
        if value not in choices:
            raise ValueError(f"{key}={value!r} is not valid; choose one of: {', '.join(choices)}")
        return value

    def pair(self, key: str, default: Any, *, kind=builtins.float, scalar: bool = False):
        """Two numbers ``[a, b]`` as a tuple of ``kind``; ``scalar=True`` also takes ``a``."""
        value = self.get(key, default)
        if scalar and isinstance(value, builtins.int | builtins.float):
            value = (value, value)
        ok = isinstance(value, list | tuple) and len(value) == 2
        if not ok or any(
            isinstance(v, bool) or not isinstance(v, builtins.int | builtins.float) for v in value
        ):
            form = "a number or a pair [a, b]" if scalar else "a pair of numbers [a, b]"
            raise ValueError(f"{key} must be {form}, got {value!r}")
        return kind(value[0]), kind(value[1])

    def bool(self, key: str, default: builtins.bool) -> builtins.bool:
        """``true`` or ``false``."""
        value = self.get(key, default)
        if not isinstance(value, builtins.bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
        return value
