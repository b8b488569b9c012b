"""Optimiser parameter groups and the per-iteration learning-rate schedule.

* :func:`param_groups` splits parameters into decay / no-decay groups (and optional per-name
  lr scales, e.g. layer-wise lr decay for finetuning);
* :func:`scaled_lr` is the linear scaling rule ``base_lr * effective_batch / 256``;
* :class:`WarmupCosine` sets every group's ``lr`` per iteration: linear warm-up from 0, then
  a half cosine down to ``min_lr``. Each group's ``lr_scale`` (default 1) multiplies it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn
from torch.optim import Optimizer


def is_no_decay(name: str, param: nn.Parameter, keywords: Iterable[str] = ("bias",)) -> bool:
    """True for 1-D parameters (norm weights, biases) and names with a keyword component.

    ``keywords`` are matched against the dot-separated parts of the name, so ``("bias",
    "gamma")`` catches ``blocks.0.grn.gamma`` and a ``(1, C)`` ``conv.bias`` alike.
    """
    parts = set(name.split("."))
    return param.ndim <= 1 or any(k in parts for k in keywords)


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    no_decay_keywords: Iterable[str] = ("bias",),
    lr_scale: Callable[[str], float] | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups for ``torch.optim`` with weight decay only where it belongs.

    Frozen parameters (``requires_grad=False``) are left out. Each group holds ``params``,
    ``weight_decay``, ``lr_scale`` and ``param_names`` (for logging and checks).
    """
    keywords = tuple(no_decay_keywords)
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = 0.0 if is_no_decay(name, p, keywords) else weight_decay
        scale = 1.0 if lr_scale is None else float(lr_scale(name))
        group = groups.setdefault(
            (wd, scale), {"params": [], "weight_decay": wd, "lr_scale": scale, "param_names": []}
        )
        group["params"].append(p)
        group["param_names"].append(name)
    return list(groups.values())


def scaled_lr(base_lr: float, effective_batch: int, reference_batch: int = 256) -> float:
    """Linear scaling rule: ``base_lr * effective_batch / reference_batch``."""
    return base_lr * effective_batch / reference_batch


class WarmupCosine:
    """Per-iteration lr: linear warm-up over ``warmup_steps``, then cosine to ``min_lr``.

    A pure function of the step (no hidden state), so resuming at step ``s`` only needs ``s``.
    """

    def __init__(
        self, lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0
    ) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if lr < 0 or min_lr < 0:
            raise ValueError(f"learning rates must be >= 0, got lr={lr}, min_lr={min_lr}")
        self.lr, self.min_lr = lr, min_lr
        self.total_steps, self.warmup_steps = total_steps, min(warmup_steps, total_steps)

    def lr_at(self, step: int) -> float:
        """Learning rate for the update that follows ``step`` finished updates (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def apply(self, optimizer: Optimizer, step: int) -> float:
        """Set every group's ``lr`` for ``step`` (times its ``lr_scale``); return the base lr."""
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "min_lr": self.min_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
        }
