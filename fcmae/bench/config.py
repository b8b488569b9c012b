"""Typed benchmark settings, their validation, and the expansion of sweeps into cases.

A sweep is a named grid: the cartesian product of sizes, mask ratios, batch sizes and
resolutions, each measured with the listed sparse depthwise implementations and the dense twin.
All checks run before any work starts and end in one ValueError line naming the fix.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from fcmae.masking import check_mask_ratio, check_patch_size
from fcmae.registry import MODEL_SIZES

PHASES = ("encoder_fwd", "encoder_fwd_bwd", "train_step")
ENGINES = ("sparse", "dense")
IMPLS = ("canvas", "minkowski")
DENSE_IMPL = "none"  # depthwise_impl recorded for the dense engine
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Case:
    """One configuration: a model, a batch geometry and a mask ratio."""

    model: str
    mask_ratio: float
    batch: int
    height: int
    width: int
    impls: tuple[str, ...]  # sparse depthwise implementations measured on this case

    @property
    def key(self) -> tuple:
        return (self.model, self.mask_ratio, self.batch, self.height, self.width)

    def label(self) -> str:
        return f"{self.model} {self.height}x{self.width} b{self.batch} mask {self.mask_ratio}"


@dataclass(frozen=True)
class Variant:
    """An engine as measured: ``sparse`` with a depthwise implementation, or ``dense``."""

    engine: str
    impl: str = DENSE_IMPL

    @property
    def name(self) -> str:
        return self.engine if self.engine == "dense" else f"sparse/{self.impl}"


@dataclass(frozen=True)
class Grid:
    """A sweep: every combination of the lists below is one :class:`Case`."""

    sizes: tuple[str, ...]
    mask_ratios: tuple[float, ...]
    batches: tuple[int, ...]
    resolutions: tuple[tuple[int, int], ...]  # (height, width)
    impls: tuple[str, ...] = ("canvas",)


@dataclass(frozen=True)
class BenchSettings:
    """Everything one benchmark run needs; built from the Hydra config by ``fcmae.cli.bench``."""

    grids: dict[str, Grid]
    phases: tuple[str, ...] = PHASES
    engines: tuple[str, ...] = ENGINES
    warmup: int = 1
    repeats: int = 3
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    memory: bool = True  # peak memory in a fresh subprocess per case and engine
    memory_warmup: int = 1
    memory_timeout_s: float = 1800.0
    plots: bool = True
    lr: float = 1.0e-4  # AdamW learning rate of the training-step phase
    patch_size: int = 32
    command: str = ""  # how the run was launched, written into results.md
    extra: dict = field(default_factory=dict)  # free-form run metadata (e.g. the preset)


def _resolution(value, where: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{where}: a resolution is an int or [height, width], got {value!r}")


def _names(values: Iterable[str], allowed: Sequence[str], what: str) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(str(v) for v in values))
    bad = [v for v in out if v not in allowed]
    if bad or not out:
        raise ValueError(f"{what} must be a non-empty list of {', '.join(allowed)}; got {out}")
    return out


def grid_from_mapping(name: str, raw: Mapping) -> Grid:
    """Build a :class:`Grid` from a plain mapping (one entry of the ``grids`` config)."""
    known = {"sizes", "mask_ratios", "batches", "resolutions", "depthwise_impls"}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(
            f"grids.{name}: unknown key(s) {sorted(unknown)}; expected {sorted(known)}"
        )
    missing = known - {"depthwise_impls"} - set(raw)
    if missing:
        raise ValueError(f"grids.{name}: missing key(s) {sorted(missing)}")
    impls = [("canvas" if i == "auto" else i) for i in raw.get("depthwise_impls", ["canvas"])]
    return Grid(
        sizes=_names(raw["sizes"], tuple(MODEL_SIZES), f"grids.{name}.sizes"),
        mask_ratios=tuple(float(r) for r in raw["mask_ratios"]),
        batches=tuple(int(b) for b in raw["batches"]),
        resolutions=tuple(_resolution(r, f"grids.{name}.resolutions") for r in raw["resolutions"]),
        impls=_names(impls, IMPLS, f"grids.{name}.depthwise_impls"),
    )


def validate(settings: BenchSettings) -> None:
    """Raise one ValueError line naming the problem and the fix; returns None when all is well."""
    check_patch_size(settings.patch_size)
    if not settings.grids:
        raise ValueError("no grids to measure; give at least one under `grids` (or a preset)")
    _names(settings.phases, PHASES, "phases")
    _names(settings.engines, ENGINES, "engines")
    if settings.device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {settings.device!r}")
    if settings.repeats < 1 or settings.warmup < 0 or settings.memory_warmup < 0:
        raise ValueError(
            f"need repeats >= 1 and warmup, memory_warmup >= 0; got repeats={settings.repeats}, "
            f"warmup={settings.warmup}, memory_warmup={settings.memory_warmup}"
        )
    if settings.threads is not None and settings.threads < 1:
        raise ValueError(f"threads must be >= 1 or null, got {settings.threads}")
    p = settings.patch_size
    for name, grid in settings.grids.items():
        for lst, what in (
            (grid.sizes, "sizes"),
            (grid.mask_ratios, "mask_ratios"),
            (grid.batches, "batches"),
            (grid.resolutions, "resolutions"),
        ):
            if not lst:
                raise ValueError(f"grids.{name}.{what} is empty; list at least one value")
        for r in grid.mask_ratios:
            try:
                check_mask_ratio(r)
            except ValueError as err:
                raise ValueError(f"grids.{name}.mask_ratios: {err}") from None
        if any(b < 1 for b in grid.batches):
            raise ValueError(f"grids.{name}.batches must be >= 1, got {list(grid.batches)}")
        for h, w in grid.resolutions:
            if h < p or w < p or h % p or w % p:
                raise ValueError(
                    f"grids.{name}.resolutions: {h}x{w} is not a positive multiple of the patch "
                    f"size {p}; use e.g. 224 or [224, 160]"
                )


def expand(settings: BenchSettings) -> list[Case]:
    """All cases of all grids, in grid order; a case listed twice is measured once."""
    cases: dict[tuple, Case] = {}
    for grid in settings.grids.values():
        for size, ratio, batch, (h, w) in itertools.product(
            grid.sizes, grid.mask_ratios, grid.batches, grid.resolutions
        ):
            case = Case(size, ratio, batch, h, w, grid.impls)
            old = cases.get(case.key)
            if old is not None:  # union of the implementations asked for
                impls = tuple(dict.fromkeys(old.impls + grid.impls))
                case = Case(size, ratio, batch, h, w, impls)
            cases[case.key] = case
    return list(cases.values())


def variants(case: Case, engines: Sequence[str]) -> list[Variant]:
    """The engines measured on ``case``: each sparse implementation, then dense."""
    out = []
    if "sparse" in engines:
        out += [Variant("sparse", impl) for impl in case.impls]
    if "dense" in engines:
        out.append(Variant("dense"))
    return out
