"""Shared test helpers: seeding, parameter randomisation, error-reporting comparisons."""

from __future__ import annotations

import socket

import pytest
import torch
from torch import Tensor, nn


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize_(module: nn.Module, scale: float = 0.1) -> nn.Module:
    """Perturb every parameter, zero-initialised ones (GRN gamma/beta, biases) included."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module


def max_rel_err(actual: Tensor, expected: Tensor) -> float:
    """Max absolute difference divided by the max magnitude of ``expected`` (or 1e-12)."""
    scale = expected.abs().max().clamp(min=1e-12)
    return ((actual - expected).abs().max() / scale).item()


def assert_close(actual: Tensor, expected: Tensor, tol: float, what: str = "") -> None:
    """Relative max error (see :func:`max_rel_err`) at most ``tol``; reports the error."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = max_rel_err(actual, expected)
    assert err <= tol, f"{what}: max relative error {err:.3e} > {tol:.1e}"


def patch_mask(batch: int, grid: tuple[int, int], keep: int, seed: int = 0) -> Tensor:
    """Random ``(B, gh, gw)`` mask keeping ``keep`` patches per sample (1 = removed)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(batch, grid[0] * grid[1], generator=g)
    mask = torch.ones_like(noise)
    mask.scatter_(1, noise.argsort(dim=1)[:, :keep], 0.0)
    return mask.view(batch, *grid)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for torch.distributed tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
