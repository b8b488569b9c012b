"""``fcmae-bench``: sparse-vs-dense benchmark of the FCMAE engines (see benchmarks/README.md).

Importable pieces: :func:`run_bench` (the whole run), :class:`BenchSettings` and
:class:`Grid` (its typed settings), and the analytic multiply-add counter in
:mod:`fcmae.bench.macs`.
"""

from fcmae.bench.config import PHASES, BenchSettings, Case, Grid, Variant, expand, validate
from fcmae.bench.macs import Geometry, encoder_layer_macs, ideal_ratio, phase_macs
from fcmae.bench.runner import run_bench

__all__ = [
    "PHASES",
    "BenchSettings",
    "Case",
    "Geometry",
    "Grid",
    "Variant",
    "encoder_layer_macs",
    "expand",
    "ideal_ratio",
    "phase_macs",
    "run_bench",
    "validate",
]
