"""Benchmark outputs: results.csv, results.json, results.md, metrics.jsonl, meta.json, plots.

Every file is written to a temporary name in the run directory and moved into place, so a
reader (or an interrupted run) never sees a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import subprocess
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import torch

from fcmae.registry import MODEL_SIZES

log = logging.getLogger(__name__)

# Column order of results.csv (results.json records also hold ``times_ms``, every call's time).
COLUMNS = (
    "model",
    "engine",
    "depthwise_impl",
    "variant",
    "mask_ratio",
    "batch",
    "height",
    "width",
    "phase",
    "device",
    "threads",
    "repeats",
    "warmup",
    "visible_patches",
    "visible_fraction",
    "median_ms",
    "q1_ms",
    "q3_ms",
    "iqr_ms",
    "min_ms",
    "max_ms",
    "img_per_s",
    "time_ratio",
    "time_ratio_paired",
    "time_ratio_min",
    "load_avg",
    "macs",
    "macs_executed",
    "mac_ratio",
    "mac_ratio_executed",
    "peak_mem_mb",
    "work_mem_mb",
    "mem_ratio",
    "mem_method",
    "max_abs_diff",
    "out_max_abs",
)
PLOTS = ("time_ratio_vs_mask.png", "throughput_per_size.png")
Y_CAP = 1.5  # time ratios above are drawn at the top of the ratio plot, with their value


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    """``git describe --dirty``: the commit, with ``-dirty`` when the tree had local edits."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(device: torch.device, settings) -> dict:
    """What the numbers were measured on (written to meta.json and results.md)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{_cpu_name()}, {os.cpu_count()} cores"
    return {
        "device": device.type,
        "device_name": name,
        "threads": settings.threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "command": settings.command,
        "warmup": settings.warmup,
        "repeats": settings.repeats,
        "seed": settings.seed,
        **settings.extra,
    }


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in COLUMNS})
    return buf.getvalue()


def to_jsonl(records: list[dict]) -> str:
    """One JSON line per record, slash-named keys (``bench/median_ms``), no per-call times."""
    lines = []
    for r in records:
        lines.append(json.dumps({f"bench/{k}": r.get(k) for k in COLUMNS}))
    return "\n".join(lines) + "\n"


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def to_markdown(records: list[dict], env: dict) -> str:
    """A Markdown table of every record, with the machine and the command above it."""
    head = [
        f"Measured on {env['device_name']} ({env['device']}, {env['threads']} threads), "
        f"torch {env['torch']}, commit {env.get('git_commit') or 'unknown'}; "
        f"{env['warmup']} warm-up + {env['repeats']} timed calls per engine, interleaved.",
        "",
        f"Command: `{env.get('command') or 'fcmae-bench'}`",
        "",
        "Times are medians (IQR = interquartile range); ratios are sparse / dense for the same "
        "case and phase: time ratio of the medians, paired = median of the per-repetition "
        "ratios (engines run back to back); MAC ratio is the ideal one (every layer at visible "
        "sites only); peak memory is this engine's alone, measured in a fresh process (method "
        "in results.csv); load = 1-minute load average while timing (above the core count, other "
        "processes shared the CPU).",
        "",
    ]
    cols = (
        "model",
        "HxW",
        "batch",
        "mask",
        "phase",
        "engine",
        "median ms",
        "IQR ms",
        "img/s",
        "time ratio",
        "paired",
        "MAC ratio",
        "peak MB",
        "mem ratio",
        "max abs diff",
        "load",
    )
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        cells = (
            r["model"],
            f"{r['height']}x{r['width']}",
            str(r["batch"]),
            f"{r['mask_ratio']:g}",
            r["phase"],
            r["variant"],
            _fmt(r["median_ms"], ".1f"),
            _fmt(r["iqr_ms"], ".1f"),
            _fmt(r["img_per_s"], ".2f"),
            _fmt(r["time_ratio"], ".3f"),
            _fmt(r["time_ratio_paired"], ".3f"),
            _fmt(r["mac_ratio"], ".3f"),
            _fmt(r["peak_mem_mb"], ".0f"),
            _fmt(r["mem_ratio"], ".3f"),
            _fmt(r["max_abs_diff"], ".1e"),
            _fmt(r.get("load_avg"), ".1f"),
        )
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(head + rows) + "\n"


# ------------------------------------------------------------------------------------ plots


def _figure(panels: int):
    """A figure with ``panels`` axes side by side (matplotlib's object API: no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * panels, 4.2))
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def _savefig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _atomic_write(path, buf.getvalue())


def _plotted_ratio(r: dict) -> float:
    """The paired time ratio (robust to load drifting between repetitions), else medians'."""
    paired = r.get("time_ratio_paired")
    return r["time_ratio"] if paired is None else paired


def plot_ratio_vs_mask(records: list[dict], path: Path) -> None:
    """Sparse / dense time ratio (paired) against mask ratio, one panel per phase, with the
    ideal MAC ratio of the same cases dashed in the same colour."""
    phases = list(dict.fromkeys(r["phase"] for r in records))
    fig, axes = _figure(len(phases))
    for ax, phase in zip(axes, phases, strict=True):
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for r in records:
            if r["phase"] == phase and r["engine"] == "sparse" and r["time_ratio"] is not None:
                key = (r["model"], r["variant"], r["batch"], r["height"], r["width"])
                groups[key].append(r)
        for i, (key, rs) in enumerate(sorted(groups.items())):
            rs.sort(key=lambda r: r["mask_ratio"])
            x = [r["mask_ratio"] for r in rs]
            color = f"C{i % 10}"
            label = f"{key[0]} {key[1]} {key[3]}x{key[4]} b{key[2]}"
            y = [min(_plotted_ratio(r), Y_CAP) for r in rs]
            ax.plot(x, y, "o-", color=color, label=label)
            ax.plot(x, [r["mac_ratio"] for r in rs], "x--", color=color, alpha=0.7)
            for r in rs:  # off-scale points (e.g. the minkowski conv on CPU): value at the top
                if _plotted_ratio(r) > Y_CAP:
                    ax.annotate(
                        f"{_plotted_ratio(r):.1f}",
                        (r["mask_ratio"], Y_CAP),
                        textcoords="offset points",
                        xytext=(4, -10),
                        fontsize=7,
                        color=color,
                    )
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{phase} (x, dashed: ideal MAC ratio)")
        ax.set_xlabel("mask ratio")
        ax.set_ylabel("time sparse / dense (paired)")
        ax.set_xlim(-0.05, 0.95)
        ax.set_ylim(0, Y_CAP * 1.05)
        ax.grid(alpha=0.3)
        if groups:
            ax.legend(fontsize=7)
    _savefig(fig, path)


def _typical_case(records: list[dict], model: str) -> tuple | None:
    """The case of ``model`` shown in the throughput plot: mask ratio nearest 0.6, then the
    (batch, height, width) measured in most cases, the larger batch on a tie."""
    rs = [r for r in records if r["model"] == model]
    if not rs:
        return None
    best = min({r["mask_ratio"] for r in rs}, key=lambda m: (abs(m - 0.6), m))
    cases = {
        (r["batch"], r["height"], r["width"], r["phase"]) for r in rs if r["mask_ratio"] == best
    }
    shapes = Counter(c[:3] for c in cases)
    shape = max(shapes, key=lambda s: (shapes[s], s[0], s[1] * s[2]))
    return (best, *shape)


def plot_throughput(records: list[dict], path: Path) -> None:
    """Images per second (log scale) of every engine, per model size, one panel per phase."""
    phases = list(dict.fromkeys(r["phase"] for r in records))
    models = [m for m in MODEL_SIZES if any(r["model"] == m for r in records)]
    cases = {m: _typical_case(records, m) for m in models}
    shown = [
        r
        for r in records
        if (r["mask_ratio"], r["batch"], r["height"], r["width"]) == cases[r["model"]]
    ]
    names = list(dict.fromkeys(r["variant"] for r in shown))  # engines with a bar somewhere
    fig, axes = _figure(len(phases))
    width = 0.8 / max(len(names), 1)
    for ax, phase in zip(axes, phases, strict=True):
        for j, name in enumerate(names):
            xs, ys = [], []
            for r in shown:
                if (r["variant"], r["phase"]) == (name, phase):
                    xs.append(models.index(r["model"]) + (j - (len(names) - 1) / 2) * width)
                    ys.append(r["img_per_s"])
            ax.bar(xs, ys, width=width, label=name, color=f"C{j % 10}")
        ax.set_xticks(range(len(models)))
        labels = [f"{m}\n{c[2]}x{c[3]} b{c[1]}\nmask {c[0]:g}" for m, c in cases.items()]
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_yscale("log")
        ax.set_title(phase)
        ax.set_ylabel("images / s (log)")
        ax.grid(alpha=0.3, axis="y", which="both")
        ax.legend(fontsize=7)
    _savefig(fig, path)


def write_outputs(records: list[dict], out_dir: Path, env: dict, plots: bool = True) -> None:
    """Write every output file of a run (plots only when ``plots``)."""
    out_dir = Path(out_dir)
    _atomic_write(out_dir / "results.csv", to_csv(records).encode())
    _atomic_write(out_dir / "results.json", json.dumps(records, indent=1).encode())
    _atomic_write(out_dir / "results.md", to_markdown(records, env).encode())
    _atomic_write(out_dir / "metrics.jsonl", to_jsonl(records).encode())
    _atomic_write(out_dir / "meta.json", json.dumps(env, indent=1).encode())
    if plots and records:
        plot_ratio_vs_mask(records, out_dir / PLOTS[0])
        plot_throughput(records, out_dir / PLOTS[1])


def log_to_wandb(records: list[dict], out_dir: Path, config: dict, logger_cfg: dict) -> None:
    """Send the results table and the plots to Weights & Biases (``logger=wandb``)."""
    from fcmae.engine.wandb_logger import WandbLogger

    wb = WandbLogger(
        out_dir,
        config,
        project=logger_cfg.get("project") or "fcmae",
        mode=logger_cfg.get("mode") or "offline",
        entity=logger_cfg.get("entity"),
        name=logger_cfg.get("run_name"),
        tags=list(logger_cfg.get("tags") or []) + ["bench"],
    )
    try:
        wandb = wb._wandb
        table = wandb.Table(
            columns=list(COLUMNS), data=[[r.get(c) for c in COLUMNS] for r in records]
        )
        payload = {"bench/results": table}
        for name in PLOTS:
            if (Path(out_dir) / name).exists():
                payload[f"bench/{Path(name).stem}"] = wandb.Image(str(Path(out_dir) / name))
        wb.run.log(payload)
    finally:
        wb.finish()
