"""Convert FCMAE state dicts between the sparse (MinkowskiEngine) and dense layouts.

Conversion is strict (every key must be understood), decided by key name and tensor shape,
and idempotent (a tensor already in the target layout passes through unchanged), so a
sparse -> dense -> sparse round trip returns the original tensors exactly.

Per encoder parameter (``encoder.`` prefix; all other keys are identical in both layouts):

=====================================  ======================  ===========================
sparse key                             sparse shape            dense key / shape
=====================================  ======================  ===========================
``downsample_layers.0.{0,1}.*``        as dense                unchanged (dense stem)
``downsample_layers.i.0.ln.{w,b}``     ``(C,)``                ``downsample_layers.i.0.*``
``downsample_layers.i.1.kernel``       ``(4, C_in, C_out)``    ``.weight (C_out, C_in, 2, 2)``
``downsample_layers.i.1.bias``         ``(1, C_out)``          ``.bias (C_out,)``
``stages.i.j.dwconv.kernel``           ``(49, C)``             ``.weight (C, 1, 7, 7)``
``stages.i.j.dwconv.bias``             ``(1, C)``              ``.bias (C,)``
``stages.i.j.norm.ln.{w,b}``           ``(C,)``                ``stages.i.j.norm.*``
``stages.i.j.pwconv{1,2}.linear.*``    Linear                  ``stages.i.j.pwconv{1,2}.*``
``stages.i.j.grn.{gamma,beta}``        ``(1, D)``              ``(1, 1, 1, D)``
=====================================  ======================  ===========================
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from torch import Tensor

from sparse_ops.layout import (
    conv_kernel_to_weight,
    conv_weight_to_kernel,
    depthwise_kernel_to_weight,
    depthwise_weight_to_kernel,
)

_STAGE = r"stages\.\d+\.\d+\."
_DOWN = r"downsample_layers\.[123]\."

# Pure renames: the sparse layout inserts an infix (group ``sp``) before weight/bias.
_RENAMES = [
    (
        re.compile(rf"(?P<pre>(?:{_DOWN}0|{_STAGE}norm)\.)(?P<sp>ln\.)?(?P<post>weight|bias)"),
        "ln.",
    ),
    (
        re.compile(rf"(?P<pre>{_STAGE}pwconv[12]\.)(?P<sp>linear\.)?(?P<post>weight|bias)"),
        "linear.",
    ),
]
# Reshapes: (regex with groups pre/post, is_sparse(tensor), to_dense, to_sparse). A sparse
# convolution's tensor is named ``kernel``, its dense twin ``weight``.
_RESHAPES: list[tuple[re.Pattern, Callable, Callable, Callable]] = [
    (re.compile(pattern), *fns)
    for pattern, *fns in [
        # downsampling convolution kernel
        (
            rf"(?P<pre>{_DOWN}1\.)(?P<post>kernel|weight)",
            lambda t: t.dim() == 3,
            conv_kernel_to_weight,
            conv_weight_to_kernel,
        ),
        # depthwise kernel
        (
            rf"(?P<pre>{_STAGE}dwconv\.)(?P<post>kernel|weight)",
            lambda t: t.dim() == 2,
            depthwise_kernel_to_weight,
            depthwise_weight_to_kernel,
        ),
        # biases of MinkowskiEngine convolutions: (1, C) <-> (C,)
        (
            rf"(?P<pre>(?:{_DOWN}1|{_STAGE}dwconv)\.)(?P<post>bias)",
            lambda t: t.dim() == 2,
            lambda t: t.reshape(-1),
            lambda t: t.reshape(1, -1),
        ),
        # GRN: (1, D) <-> (1, 1, 1, D)
        (
            rf"(?P<pre>{_STAGE}grn\.)(?P<post>gamma|beta)",
            lambda t: t.dim() == 2,
            lambda t: t.reshape(1, 1, 1, -1),
            lambda t: t.reshape(1, -1),
        ),
    ]
]
# Keys identical in both layouts (stem, decoder, heads); checked so nothing passes unseen.
_SHARED = re.compile(
    r"(downsample_layers\.0\.[01]\.(weight|bias)|proj\.(weight|bias)|mask_token|"
    r"pred\.(weight|bias)|decoder\.\d+\..+|norm\.(weight|bias)|head\.(weight|bias))"
)


def _convert(state_dict: Mapping[str, Tensor], to: str, prefix: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        name = key[len(prefix) :] if key.startswith(prefix) else None
        new = None if name is None else _convert_one(name, tensor, to)
        if new is not None:
            out[prefix + new[0]] = new[1]
        elif _SHARED.fullmatch(key[len(prefix) :] if name is not None else key):
            out[key] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"cannot convert {len(unknown)} key(s) of an unknown layout: "
            + ", ".join(unknown[:10])
            + (" ..." if len(unknown) > 10 else "")
        )
    return out


def _convert_one(name: str, t: Tensor, to: str) -> tuple[str, Tensor] | None:
    for rx, infix in _RENAMES:
        if m := rx.fullmatch(name):
            return m["pre"] + (infix if to == "sparse" else "") + m["post"], t
    for rx, is_sparse, to_dense, to_sparse in _RESHAPES:
        if (m := rx.fullmatch(name)) is None:
            continue
        pre, post, sparse_now = m["pre"], m["post"], is_sparse(t)
        if post in ("kernel", "weight") and (post == "kernel") != sparse_now:
            raise ValueError(f"{name}: shape {tuple(t.shape)} does not fit its name")
        if to == "dense":
            return pre + ("weight" if post == "kernel" else post), to_dense(t) if sparse_now else t
        return pre + ("kernel" if post == "weight" else post), t if sparse_now else to_sparse(t)
    return None


def sparse_to_dense(state_dict: Mapping[str, Tensor], prefix: str = "encoder.") -> dict:
    """FCMAE state dict in the sparse (MinkowskiEngine) layout -> the dense layout.

    Keys already dense pass through; any key outside both layouts is a ValueError.
    """
    return _convert(state_dict, "dense", prefix)


def dense_to_sparse(state_dict: Mapping[str, Tensor], prefix: str = "encoder.") -> dict:
    """FCMAE state dict in the dense layout -> the sparse (MinkowskiEngine) layout."""
    return _convert(state_dict, "sparse", prefix)
