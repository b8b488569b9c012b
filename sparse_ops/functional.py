"""Fused autograd functions for the sparse block's hot path, on features ``(N, C)``.

``gelu_grn`` computes ``GRN(GELU(h))`` with the L2 norm per sample (over that sample's sites)
and saves only ``h`` and per-sample statistics ``(B, C)`` for backward, recomputing
``GELU(h)`` there. Unfused autograd would keep three more ``(N, 4C)`` tensors per block
(GELU's output, the broadcast per-sample factor and the scaled product), which is most of the
encoder's activation memory.

Per-sample sums over sites use a ``(B, N)`` one-hot matrix product (``Canvas.samples``): on CPU
``index_add_`` into B rows serialises and cost 20% of the encoder's fwd+bwd time; the GEMM does
B times the additions and is still far faster.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _grn_stats(x: Tensor, samples: Tensor, eps: float):
    """Per-sample L2 norm ``g (B, C)`` and normalised response ``nx (B, C)``."""
    g = (samples @ (x * x)).sqrt()  # (B, N) @ (N, C)
    denom = g.mean(dim=-1, keepdim=True) + eps  # (B, 1)
    return g, denom, g / denom


class _UniqueRows(torch.autograd.Function):
    """``src[index]`` for an index without repeats: backward writes rows instead of adding."""

    @staticmethod
    def forward(ctx, src, index):
        ctx.save_for_backward(index)
        ctx.rows = src.shape[0]
        return src.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        out = grad.new_zeros(ctx.rows, *grad.shape[1:])
        return out.index_copy_(0, index, grad), None


def unique_rows(src: Tensor, index: Tensor) -> Tensor:
    """Rows ``src[index]`` where ``index`` has no repeats (faster backward than index_select)."""
    return _UniqueRows.apply(src, index)


class _GeluGRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, gamma, beta, batch, samples, eps):
        x = F.gelu(h)  # (N, C)
        g, denom, nx = _grn_stats(x, samples, eps)
        scale = 1.0 + gamma * nx  # (B, C): y = x * (1 + gamma * nx) + beta
        ctx.save_for_backward(h, gamma, batch, samples, g, denom, nx)
        return torch.addcmul(beta, x, scale.index_select(0, batch))

    @staticmethod
    def backward(ctx, gy):
        h, gamma, batch, samples, g, denom, nx = ctx.saved_tensors
        x = F.gelu(h)  # recomputed instead of saved
        c = nx.shape[1]
        p = samples @ (gy * x)  # (B, C): per-sample sums of gy * x
        g_gamma = (p * nx).sum(0, keepdim=True)
        g_beta = gy.sum(0, keepdim=True)
        g_nx = gamma * p  # (B, C)
        # nx = g / (mean_c g + eps)
        g_g = g_nx / denom - (g_nx * g).sum(-1, keepdim=True) / (denom * denom * c)
        # g = sqrt(sum x^2): dg/dx = x / g (0 where a sample's channel is all zero)
        g_over = torch.where(g > 0, g_g / g.clamp(min=torch.finfo(g.dtype).tiny), 0.0)
        factor = (1.0 + gamma * nx).index_select(0, batch)  # (N, C)
        gx = gy * factor + x * g_over.index_select(0, batch)
        gh = torch.ops.aten.gelu_backward(gx, h)
        return gh, g_gamma, g_beta, None, None, None


def gelu_grn(
    h: Tensor, gamma: Tensor, beta: Tensor, batch: Tensor, samples: Tensor, eps: float = 1e-6
) -> Tensor:
    """``GRN(GELU(h))`` per sample.

    ``h (N, C)``; ``gamma``, ``beta (1, C)``; ``batch (N,)`` int64 sample of each site;
    ``samples (B, N)`` its one-hot matrix in ``h``'s dtype.
    """
    return _GeluGRN.apply(h, gamma, beta, batch, samples, eps)


def grn(x: Tensor, gamma: Tensor, beta: Tensor, batch: Tensor, samples: Tensor, eps=1e-6):
    """Unfused per-sample GRN on ``x (N, C)`` (plain autograd); arguments as :func:`gelu_grn`."""
    _, _, nx = _grn_stats(x, samples, eps)
    return gamma * (x * nx.index_select(0, batch)) + beta + x
