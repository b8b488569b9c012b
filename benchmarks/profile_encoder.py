"""Where the time of one benchmark phase goes: torch.profiler tables, sparse and dense.

    .venv/bin/python benchmarks/profile_encoder.py                       # tiny/224/b16/0.6
    .venv/bin/python benchmarks/profile_encoder.py --size atto --batch 8 --out /tmp/p.txt

Same set-up as ``fcmae-bench`` (fcmae.bench.phases: same weights, images and mask for both
engines). After ``--warmup`` untimed calls, one call of ``--phase`` runs under the profiler
for each engine. The report holds, per engine:

1. the top operators by self CPU time (where the cycles are spent);
2. forward time per module class (inclusive), from record_function ranges that forward
   hooks open around every module of the encoder (``fwd::<ClassName>``);
3. backward time per autograd node (inclusive), for phases with a backward pass.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from fcmae.bench.config import Case, Variant
from fcmae.bench.phases import make_inputs, make_models, make_phase, select

log = logging.getLogger("profile_encoder")


def add_module_ranges(root: torch.nn.Module) -> list:
    """Open a ``fwd::<ClassName>`` profiler range around every submodule's forward."""
    handles, stack = [], []

    def pre(module, args):
        rf = record_function(f"fwd::{type(module).__name__}")
        rf.__enter__()
        stack.append(rf)

    def post(module, args, out):
        stack.pop().__exit__(None, None, None)

    for module in root.modules():
        if module is not root:
            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post))
    return handles


def _table(events, rows: int, key: str, keep=lambda name: True) -> str:
    """``rows`` events sorted by ``key`` (``self`` or ``total`` CPU time), as plain text."""
    picked = [e for e in events if keep(e.key)]
    all_self = sum(e.self_cpu_time_total for e in events) or 1.0
    attr = "self_cpu_time_total" if key == "self" else "cpu_time_total"
    picked.sort(key=lambda e: getattr(e, attr), reverse=True)
    lines = [f"{'name':<64} {'calls':>6} {'self ms':>9} {'total ms':>9} {'self %':>7}"]
    for e in picked[:rows]:
        lines.append(
            f"{e.key[:64]:<64} {e.count:>6} {e.self_cpu_time_total / 1e3:>9.1f} "
            f"{e.cpu_time_total / 1e3:>9.1f} {100 * e.self_cpu_time_total / all_self:>6.1f}%"
        )
    return "\n".join(lines) + "\n"


def profile_variant(args, variant: Variant) -> str:
    case = Case(args.size, args.mask, args.batch, args.res, args.res, (args.impl,))
    device = torch.device("cpu")
    models = make_models(case, [variant], args.seed, device)
    model = select(models, variant)
    inputs = make_inputs(case, args.seed, device)
    run = make_phase(args.phase, model, inputs)
    for _ in range(args.warmup):
        run()
    handles = add_module_ranges(model.encoder)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        run()
    wall_ms = (time.perf_counter() - t0) * 1e3
    for h in handles:
        h.remove()
    # a second, unprofiled call for the wall time without profiler overhead
    t0 = time.perf_counter()
    run()
    plain_ms = (time.perf_counter() - t0) * 1e3
    events = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in events) / 1e3
    out = [
        f"=== {variant.name}: {case.label()} {args.phase}, {torch.get_num_threads()} threads",
        f"wall {plain_ms:.0f} ms unprofiled, {wall_ms:.0f} ms profiled; "
        f"sum of self CPU times {total_self:.0f} ms",
        "",
        f"-- top {args.rows} operators by self CPU time (self % of the sum of self times)",
        _table(events, args.rows, "self", lambda k: not k.startswith("fwd::")),
        "-- forward per module class (inclusive; nested classes overlap)",
        _table(events, args.rows, "total", lambda k: k.startswith("fwd::")),
    ]
    if args.phase != "encoder_fwd":
        out += [
            "-- backward per autograd node (inclusive)",
            _table(
                events,
                args.rows,
                "total",
                lambda k: k.startswith("autograd::engine::evaluate_function"),
            ),
        ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="tiny")
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--mask", type=float, default=0.6)
    p.add_argument("--impl", default="canvas", choices=("canvas", "minkowski"))
    p.add_argument(
        "--phase",
        default="encoder_fwd_bwd",
        choices=("encoder_fwd", "encoder_fwd_bwd", "train_step"),
    )
    p.add_argument("--engines", default="sparse,dense", help="comma list: sparse, dense")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("profile.txt"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = []
    for engine in args.engines.split(","):
        variant = Variant("sparse", args.impl) if engine == "sparse" else Variant("dense")
        log.info("profiling %s", variant.name)
        sections.append(profile_variant(args, variant))
    args.out.write_text("\n\n".join(sections) + "\n")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
