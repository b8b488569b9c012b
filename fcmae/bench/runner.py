"""The benchmark loop: interleaved timings of every engine, then peak memory per engine.

For each case the models of all engines live in one process; for each phase every engine is
warmed up, then each repetition runs every engine once, the order rotating from one
repetition to the next (sparse, dense; dense, sparse; ...), so that slow drifts and bursts of
machine noise hit all engines alike. Times are wall-clock (``time.perf_counter``) around one
call, with ``torch.cuda.synchronize`` before and after on a GPU. Peak memory comes from a fresh
subprocess per case and engine (:mod:`fcmae.bench.memory`).
"""

from __future__ import annotations

import gc
import logging
import os
import statistics
import time
from pathlib import Path

import torch

from fcmae.bench.config import BenchSettings, Case, Variant, expand, validate, variants
from fcmae.bench.macs import Geometry, phase_macs
from fcmae.bench.memory import measure_in_subprocess
from fcmae.bench.phases import (
    encoder_max_abs_diff,
    make_inputs,
    make_models,
    make_phase,
    resolve_device,
    select,
    synchronize,
)
from fcmae.bench.report import environment, write_outputs

log = logging.getLogger(__name__)

DIFF_WARN = 1e-4  # relative encoder difference above which a warning is logged


def rotation(items: list, rep: int) -> list:
    """``items`` rotated left by ``rep``: the order of repetition ``rep``."""
    k = rep % len(items) if items else 0
    return items[k:] + items[:k]


def summarize(times_ms: list[float]) -> dict[str, float]:
    """Median, quartiles (inclusive method), IQR, min and max of per-call times."""
    med = statistics.median(times_ms)
    if len(times_ms) >= 2:
        q1, _, q3 = statistics.quantiles(times_ms, n=4, method="inclusive")
    else:
        q1 = q3 = med
    return {
        "median_ms": med,
        "q1_ms": q1,
        "q3_ms": q3,
        "iqr_ms": q3 - q1,
        "min_ms": min(times_ms),
        "max_ms": max(times_ms),
    }


def time_phase(
    phase: str,
    models: dict,
    vs: list[Variant],
    inputs,
    settings: BenchSettings,
    device: torch.device,
) -> dict[str, list[float]]:
    """Per-variant call times (ms) of ``phase``, interleaved over repetitions."""
    runs = {eng: make_phase(phase, m, inputs, settings.lr) for eng, m in models.items()}
    times: dict[str, list[float]] = {v.name: [] for v in vs}
    for rep in range(settings.warmup + settings.repeats):
        for v in rotation(vs, rep):
            select(models, v)
            synchronize(device)
            t0 = time.perf_counter()
            runs[v.engine]()
            synchronize(device)
            dt = (time.perf_counter() - t0) * 1e3
            if rep >= settings.warmup:
                times[v.name].append(dt)
    for m in models.values():
        m.zero_grad(set_to_none=True)
    return times


def paired_ratio(times: list[float], ref: list[float] | None) -> float | None:
    """Median over repetitions of ``times[i] / ref[i]``.

    Repetition ``i`` ran every engine back to back, so load that drifts from one repetition to
    the next cancels in each ratio.
    """
    if not ref:
        return None
    return statistics.median(a / b for a, b in zip(times, ref, strict=True))


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def measure_case(
    case: Case, settings: BenchSettings, device: torch.device, workdir: Path
) -> list[dict]:
    """All records (one per engine and phase) of one case."""
    vs = variants(case, settings.engines)
    models = make_models(case, vs, settings.seed, device, settings.patch_size)
    inputs = make_inputs(case, settings.seed, device, settings.patch_size)
    geo = Geometry(case.batch, case.height, case.width, inputs.visible, settings.patch_size)
    diffs: dict[str, tuple[float, float]] = {}
    if "dense" in models:
        for v in vs:
            if v.engine == "sparse":
                diffs[v.name] = encoder_max_abs_diff(models, v, inputs)
                err, scale = diffs[v.name]
                level = logging.WARNING if err > DIFF_WARN * max(scale, 1.0) else logging.INFO
                log.log(
                    level,
                    "%s %s: encoder max |sparse - dense| = %.2e (max |dense| %.2f)",
                    case.label(),
                    v.name,
                    err,
                    scale,
                )
    times = {}
    loads = []
    for phase in settings.phases:
        times[phase] = time_phase(phase, models, vs, inputs, settings, device)
        loads.append(load_average())
        for v in vs:
            log.info(
                "%s %-16s %-17s median %9.1f ms",
                case.label(),
                phase,
                v.name,
                statistics.median(times[phase][v.name]),
            )
    del models
    gc.collect()
    memory: dict[str, dict] = {}
    if settings.memory:
        for v in vs:
            memory[v.name] = measure_in_subprocess(
                case,
                v,
                list(settings.phases),
                seed=settings.seed,
                device=str(device),
                threads=settings.threads,
                warmup=0,
                patch_size=settings.patch_size,
                lr=settings.lr,
                workdir=workdir,
                timeout_s=settings.memory_timeout_s,
            )
            log.info(
                "%s %s peak memory (MB): %s",
                case.label(),
                v.name,
                {p: round(m["peak_mem_mb"], 1) for p, m in memory[v.name].items()},
            )
    load = max(loads) if None not in loads else None
    cores = os.cpu_count() or 1
    if device.type == "cpu" and load is not None and load > cores:
        log.warning(
            "%s: load average %.1f on %d cores while timing; other processes shared the CPU, "
            "expect noisy times (the paired ratio is the most robust figure)",
            case.label(),
            load,
            cores,
        )
    return build_records(case, vs, geo, times, memory, diffs, settings, device, load)


def build_records(case, vs, geo, times, memory, diffs, settings, device, load) -> list[dict]:
    """One record per engine and phase; ``load``: the 1-minute load average while timing."""
    records = []
    threads = settings.threads or torch.get_num_threads()
    for phase in settings.phases:
        dense_macs = phase_macs(case.model, geo, "dense", phase)
        dense = Variant("dense")
        dense_t = times[phase].get(dense.name)
        dense_ms = statistics.median(dense_t) if dense_t else None
        dense_min = min(dense_t) if dense_t else None
        dense_mem = memory.get(dense.name, {}).get(phase, {}).get("peak_mem_mb")
        for v in vs:
            if v.engine == "dense":
                macs = macs_exec = dense_macs
            else:
                macs = phase_macs(case.model, geo, "ideal", phase)
                mode = "executed" if v.impl == "canvas" else "ideal"
                macs_exec = phase_macs(case.model, geo, mode, phase)
            own = times[phase][v.name]
            stats = summarize(own)
            mem = memory.get(v.name, {}).get(phase, {})
            diff = diffs.get(v.name)
            records.append(
                {
                    "model": case.model,
                    "engine": v.engine,
                    "depthwise_impl": v.impl,
                    "variant": v.name,
                    "mask_ratio": case.mask_ratio,
                    "batch": case.batch,
                    "height": case.height,
                    "width": case.width,
                    "phase": phase,
                    "device": device.type,
                    "threads": threads,
                    "repeats": settings.repeats,
                    "warmup": settings.warmup,
                    "visible_patches": geo.visible,
                    "visible_fraction": geo.visible / geo.patches,
                    **stats,
                    "img_per_s": case.batch / stats["median_ms"] * 1e3,
                    "time_ratio": _ratio(stats["median_ms"], dense_ms),
                    "time_ratio_paired": paired_ratio(own, dense_t),
                    "time_ratio_min": _ratio(stats["min_ms"], dense_min),
                    "load_avg": load,
                    "macs": macs,
                    "macs_executed": macs_exec,
                    "mac_ratio": macs / dense_macs,
                    "mac_ratio_executed": macs_exec / dense_macs,
                    "peak_mem_mb": mem.get("peak_mem_mb"),
                    "work_mem_mb": mem.get("work_mem_mb"),
                    "mem_ratio": _ratio(mem.get("peak_mem_mb"), dense_mem),
                    "mem_method": mem.get("mem_method"),
                    "max_abs_diff": None if diff is None else diff[0],
                    "out_max_abs": None if diff is None else diff[1],
                    "times_ms": times[phase][v.name],
                }
            )
    return records


def run_bench(settings: BenchSettings, out_dir: Path) -> list[dict]:
    """Measure every case of ``settings``; write results into ``out_dir``; return the records.

    Outputs are rewritten (atomically) after every case, so an interrupted sweep keeps what it
    measured.
    """
    validate(settings)
    device = resolve_device(settings.device)
    from sparse_ops import import_minkowski

    import_minkowski()  # both engines take the sparse model's weights: fail early without it
    if settings.threads:
        torch.set_num_threads(settings.threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = expand(settings)
    env = environment(device, settings)
    log.info(
        "benchmark: %d case(s) x %d phase(s) on %s, %d thread(s); writing %s",
        len(cases),
        len(settings.phases),
        env["device_name"],
        env["threads"],
        out_dir,
    )
    records: list[dict] = []
    for i, case in enumerate(cases, 1):
        log.info(
            "case %d/%d: %s, engines %s",
            i,
            len(cases),
            case.label(),
            ", ".join(v.name for v in variants(case, settings.engines)),
        )
        records += measure_case(case, settings, device, out_dir / ".mem")
        write_outputs(records, out_dir, env, plots=False)
    write_outputs(records, out_dir, env, plots=settings.plots)
    if (out_dir / ".mem").is_dir():
        (out_dir / ".mem").rmdir()
    return records
