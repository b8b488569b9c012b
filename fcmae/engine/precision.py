"""Numeric precision of a training step: fp32, or bf16 autocast where the model supports it."""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str, supports_bf16: bool = True, who: str = "this model") -> str:
    """Validate a precision setting; one-line ValueError naming the fix."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}; expected one of: {', '.join(PRECISIONS)}"
        )
    if precision == "bf16" and not supports_bf16:
        raise ValueError(f"precision=bf16 is not supported by {who}; use precision=fp32")
    return precision


def autocast_context(precision: str, device: torch.device | str):
    """``torch.autocast`` to bfloat16 for ``bf16``; a no-op context for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
