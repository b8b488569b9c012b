"""Peak memory of a phase, measured in a fresh subprocess per case and engine.

Why a subprocess: the timing process holds both engines' models and the allocator's history
of every earlier case, so its resident set says little about one phase. A fresh interpreter
imports everything, records its resident set (``base``), builds one engine's model, inputs
and (for the training step) optimiser, runs the phase ``memory_warmup`` times, and measures one
more run.

CPU (method ``rss-hwm``): the kernel's resident-set high-water mark (``VmHWM``) is reset by
writing ``5`` to ``/proc/self/clear_refs`` just before the measured run and read right after.
The child runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc serves every block of 64 KiB
or more with its own mapping and returns it to the kernel on free: the resident set then
follows live tensors instead of the allocator's cache. Where ``clear_refs`` cannot be
written, a thread samples the resident set every millisecond (method ``rss-sampled``, which
can miss short peaks).

CUDA (method ``cuda-max-allocated``): ``torch.cuda.reset_peak_memory_stats`` before the run,
``torch.cuda.max_memory_allocated`` after it (tensors only, not the caching allocator's
reserve).

Two figures per phase: ``peak_mem_mb`` = peak during the run minus ``base`` (weights, inputs,
gradients, optimiser state, activations and workspace of this engine alone);
``work_mem_mb`` = peak minus what was held just before the run (activations, gradients and
temporaries of the phase itself).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

log = logging.getLogger(__name__)

MB = 1024.0 * 1024.0
_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def _status_kb(field: str) -> int:
    with open(_STATUS) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in {_STATUS}")


def rss_bytes() -> int:
    """Current resident set of this process in bytes."""
    try:
        return _status_kb("VmRSS") * 1024
    except (OSError, RuntimeError):
        import psutil

        return psutil.Process().memory_info().rss


def _reset_hwm() -> bool:
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Sampler(threading.Thread):
    def __init__(self, period_s: float = 1e-3) -> None:
        super().__init__(daemon=True)
        self.period_s, self.peak, self._stop = period_s, rss_bytes(), threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.period_s)

    def stop(self) -> int:
        self._stop.set()
        self.join()
        return max(self.peak, rss_bytes())


def measure_cpu(fn: Callable[[], object]) -> tuple[int, int, str]:
    """Run ``fn`` once; return ``(peak RSS bytes during it, RSS bytes before, method)``."""
    gc.collect()
    if _reset_hwm():
        before = rss_bytes()
        fn()
        return _status_kb("VmHWM") * 1024, before, "rss-hwm"
    sampler = _Sampler()
    before = rss_bytes()
    sampler.start()
    try:
        fn()
    finally:
        peak = sampler.stop()
    return peak, before, "rss-sampled"


def measure_cuda(fn: Callable[[], object], device) -> tuple[int, int, str]:
    """Run ``fn`` once on CUDA; return ``(max allocated bytes, allocated before, method)``."""
    import torch

    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device), before, "cuda-max-allocated"


# ---------------------------------------------------------------------------- child process


def _child(spec: dict) -> dict:
    import torch

    from fcmae.bench.config import Case, Variant
    from fcmae.bench.phases import make_inputs, make_models, make_phase, resolve_device, select

    device = resolve_device(spec["device"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    variant = Variant(**spec["variant"])
    case = Case(**{**spec["case"], "impls": tuple(spec["case"]["impls"])})
    # Both engines build the sparse model first (the dense one gets its converted weights), so
    # MinkowskiEngine is imported by both, before the baseline.
    import sparse_ops.nn  # noqa: F401

    def build(phase: str):
        models = make_models(case, [variant], spec["seed"], device, spec["patch_size"])
        model = select(models, variant)
        inputs = make_inputs(case, spec["seed"], device, spec["patch_size"])
        return model, make_phase(phase, model, inputs, spec["lr"])

    # Prime: run every phase once, so that library code, thread pools and kernel caches are
    # resident before the baseline and not counted as any phase's memory.
    for phase in spec["phases"]:
        model, run = build(phase)
        run()
        del model, run
    gc.collect()
    base = rss_bytes() if device.type == "cpu" else 0
    results = {}
    for phase in spec["phases"]:
        model, run = build(phase)
        # The training step's first call creates AdamW's state; a real step holds it throughout.
        for _ in range(max(spec["warmup"], 1 if phase == "train_step" else 0)):
            run()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            peak, before, method = measure_cuda(run, device)
        else:
            peak, before, method = measure_cpu(run)
        results[phase] = {
            "peak_mem_mb": (peak - base) / MB,
            "work_mem_mb": (peak - before) / MB,
            "mem_method": method,
        }
        del model, run  # the next phase starts from the same baseline
        gc.collect()
    return results


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    return env


def measure_in_subprocess(
    case,
    variant,
    phases: list[str],
    *,
    seed: int,
    device: str,
    threads: int | None,
    warmup: int,
    patch_size: int,
    lr: float,
    workdir: Path,
    timeout_s: float,
) -> dict[str, dict]:
    """Peak memory of each phase of ``variant`` on ``case``; see the module docstring."""
    spec = {
        "case": {**asdict(case), "impls": list(case.impls)},
        "variant": asdict(variant),
        "phases": list(phases),
        "seed": seed,
        "device": device,
        "threads": threads,
        "warmup": warmup,
        "patch_size": patch_size,
        "lr": lr,
    }
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"mem_{os.getpid()}_{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", "fcmae.bench.memory", "--spec", json.dumps(spec)]
    cmd += ["--out", str(out)]
    proc = subprocess.run(
        cmd, env=child_env(), capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join((proc.stderr or "").strip().splitlines()[-15:])
        raise RuntimeError(f"memory subprocess failed (rc {proc.returncode}):\n{tail}")
    try:
        return json.loads(out.read_text())
    finally:
        out.unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="internal: peak memory of benchmark phases")
    parser.add_argument("--spec", required=True, help="JSON: case, variant, phases, ...")
    parser.add_argument("--out", required=True, help="where to write the JSON result")
    args = parser.parse_args(argv)
    result = _child(json.loads(args.spec))
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
