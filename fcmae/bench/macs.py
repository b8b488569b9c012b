"""Analytic multiply-add (MAC) counts of the FCMAE encoder and decoder, per layer.

Counted: every convolution and linear layer (stem, downsamplings, depthwise convs, pointwise
``pwconv1``/``pwconv2``, and for a training step the decoder's projection, block and
prediction). Not counted: LayerNorm, GELU, GRN, the loss and the optimiser, which are
elementwise (a few operations per value, no multiply-add chains).

Two counts per configuration:

* ``ideal``: every layer, the stem included, only at visible sites. This is the limit an
  ideal sparse encoder reaches; with ``v`` of ``L`` patches visible it is ``v / L`` of the
  dense count (REFERENCE section 6: 19/49 -> 0.388).
* ``executed``: what this project's sparse engine computes with the ``canvas`` depthwise conv,
  which runs densely on the whole canvas of its stage; every other layer (the stem included,
  since it is gathered at visible patches) at visible sites. With the ``minkowski``
  depthwise conv the engine executes the ideal count (K*K taps per visible site, at most).
  NOTE: this mirrors fcmae/sparse_encoder.py as of the stem-on-visible-patches change; a
  change of what the engine computes must be mirrored here.

Backward: the gradients with respect to a layer's input and to its weights each cost as many
MACs as its forward, except that the stem needs no input gradient (the image is a leaf).
"""

from __future__ import annotations

from dataclasses import dataclass

from fcmae.masking import ENCODER_STRIDE, STEM_STRIDE
from fcmae.registry import get_size

DW_TAPS = 7 * 7  # depthwise kernel 7x7
DOWN_TAPS = 2 * 2  # downsampling kernel 2x2, stride 2
STEM_TAPS = STEM_STRIDE * STEM_STRIDE  # stem kernel 4x4, stride 4
MODES = ("dense", "ideal", "executed")


@dataclass(frozen=True)
class Geometry:
    """Batch geometry: ``batch`` images of ``height x width``, ``visible`` of the batch's
    ``batch * (H/p) * (W/p)`` patches kept (``p = patch_size``)."""

    batch: int
    height: int
    width: int
    visible: int
    patch_size: int = 32
    in_chans: int = 3

    @property
    def patches(self) -> int:
        return self.batch * (self.height // self.patch_size) * (self.width // self.patch_size)

    def sites(self, stride: int, *, sparse: bool) -> int:
        """Sites at a tensor stride: the whole grid, or only those under visible patches."""
        if not sparse:
            return self.batch * (self.height // stride) * (self.width // stride)
        return self.visible * (self.patch_size // stride) ** 2


def encoder_layer_macs(size: str, geo: Geometry, mode: str) -> dict[str, int]:
    """Forward MACs per encoder layer, keyed ``stem``, ``downsample.i``, ``stages.i.dwconv``,
    ``stages.i.pwconv1``, ``stages.i.pwconv2`` (summed over the blocks of stage ``i``).

    ``mode``: ``dense`` (the masked-dense twin: every site), ``ideal`` (every layer at visible
    sites only) or ``executed`` (the sparse engine with the canvas depthwise conv, which runs
    on the whole canvas).
    """
    if mode not in MODES:
        raise ValueError(f"unknown MAC counting mode {mode!r}; expected one of {MODES}")
    spec = get_size(size)
    sparse = mode != "dense"
    dw_sparse = mode == "ideal"
    stem_sites = geo.sites(STEM_STRIDE, sparse=sparse)
    macs = {"stem": stem_sites * geo.in_chans * STEM_TAPS * spec.dims[0]}
    for i, (depth, dim) in enumerate(zip(spec.depths, spec.dims, strict=True)):
        stride = STEM_STRIDE * 2**i
        n = geo.sites(stride, sparse=sparse)  # sites at this stage: (N,)
        if i > 0:
            macs[f"downsample.{i}"] = n * DOWN_TAPS * spec.dims[i - 1] * dim
        n_dw = geo.sites(stride, sparse=dw_sparse)
        macs[f"stages.{i}.dwconv"] = depth * n_dw * DW_TAPS * dim
        macs[f"stages.{i}.pwconv1"] = depth * n * dim * 4 * dim
        macs[f"stages.{i}.pwconv2"] = depth * n * 4 * dim * dim
    return macs


def decoder_layer_macs(
    size: str, geo: Geometry, decoder_dim: int = 512, decoder_depth: int = 1
) -> dict[str, int]:
    """Forward MACs of the FCMAE decoder (dense in both engines, every last-stage cell)."""
    cells = geo.sites(ENCODER_STRIDE, sparse=False)
    d = decoder_dim
    return {
        "decoder.proj": cells * get_size(size).dims[-1] * d,
        "decoder.blocks": decoder_depth * cells * (DW_TAPS * d + 8 * d * d),
        "decoder.pred": cells * d * ENCODER_STRIDE**2 * geo.in_chans,
    }


def phase_macs(size: str, geo: Geometry, mode: str, phase: str) -> int:
    """Total MACs of a benchmark phase (see :mod:`fcmae.bench.phases`)."""
    enc = encoder_layer_macs(size, geo, mode)
    fwd = sum(enc.values())
    if phase == "encoder_fwd":
        return fwd
    fwd_bwd = 3 * fwd - enc["stem"]  # no gradient for the image
    if phase == "encoder_fwd_bwd":
        return fwd_bwd
    if phase == "train_step":
        return fwd_bwd + 3 * sum(decoder_layer_macs(size, geo).values())
    raise ValueError(f"unknown phase {phase!r}")


def ideal_ratio(size: str, geo: Geometry, phase: str = "encoder_fwd") -> float:
    """Ideal sparse / dense MAC ratio of a phase."""
    return phase_macs(size, geo, "ideal", phase) / phase_macs(size, geo, "dense", phase)
