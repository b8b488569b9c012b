"""Weight layouts: MinkowskiEngine kernels <-> dense ``torch.nn.Conv2d`` weights.

With coordinates ``(b, y, x)``, MinkowskiEngine enumerates kernel offsets with the first
spatial axis (y) fastest: offset ``(dy, dx)`` is kernel row ``dy + K * dx``. Odd kernels are
centred; even ones (the 2x2 stride-2 downsampling) run 0..K-1. ``tests/test_layout.py`` pins
this against ``torch.nn.functional.conv2d``.
"""

from __future__ import annotations

import math

from torch import Tensor


def _side(rows: int) -> int:
    k = math.isqrt(rows)
    if k * k != rows:
        raise ValueError(f"kernel has {rows} offsets, not a square K*K")
    return k


def depthwise_kernel_to_weight(kernel: Tensor) -> Tensor:
    """Channelwise kernel ``(K*K, C)`` -> depthwise Conv2d weight ``(C, 1, K, K)``."""
    k = _side(kernel.shape[0])
    c = kernel.shape[1]
    return kernel.reshape(k, k, c).permute(2, 1, 0).unsqueeze(1)  # [dx, dy, c] -> [c, dy, dx]


def depthwise_weight_to_kernel(weight: Tensor) -> Tensor:
    """Depthwise Conv2d weight ``(C, 1, K, K)`` -> channelwise kernel ``(K*K, C)``."""
    c, _, k, _ = weight.shape
    return weight[:, 0].permute(2, 1, 0).reshape(k * k, c).contiguous()


def conv_kernel_to_weight(kernel: Tensor) -> Tensor:
    """Convolution kernel ``(K*K, C_in, C_out)`` -> Conv2d weight ``(C_out, C_in, K, K)``."""
    k = _side(kernel.shape[0])
    _, cin, cout = kernel.shape
    return kernel.reshape(k, k, cin, cout).permute(3, 2, 1, 0)  # [dx, dy, i, o] -> [o, i, dy, dx]


def conv_weight_to_kernel(weight: Tensor) -> Tensor:
    """Conv2d weight ``(C_out, C_in, K, K)`` -> convolution kernel ``(K*K, C_in, C_out)``."""
    cout, cin, k, _ = weight.shape
    return weight.permute(3, 2, 1, 0).reshape(k * k, cin, cout).contiguous()
