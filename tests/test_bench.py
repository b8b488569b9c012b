"""fcmae-bench: MAC counter, memory method, timing helpers, validation, presets, end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fcmae.bench.config import BenchSettings, Case, Grid, Variant, expand, validate, variants
from fcmae.bench.macs import Geometry, encoder_layer_macs, ideal_ratio, phase_macs
from fcmae.bench.memory import measure_cpu
from fcmae.bench.report import COLUMNS, PLOTS
from fcmae.bench.runner import paired_ratio, rotation, run_bench, summarize
from fcmae.registry import MODEL_SIZES

REPO = Path(__file__).resolve().parents[1]
OUTPUT_FILES = ("results.csv", "results.json", "results.md", "metrics.jsonl", "meta.json")
REQUIRED = (
    "model",
    "engine",
    "depthwise_impl",
    "mask_ratio",
    "batch",
    "height",
    "width",
    "phase",
    "median_ms",
    "peak_mem_mb",
    "macs",
    "iqr_ms",
    "time_ratio",
    "mac_ratio",
    "mem_ratio",
    "max_abs_diff",
)


def tiny_settings(**kw) -> BenchSettings:
    grid = Grid(("atto",), (0.5,), (2,), ((64, 64),), ("canvas",))
    base = dict(grids={"t": grid}, warmup=0, repeats=1, threads=1)
    return BenchSettings(**{**base, **kw})


# ------------------------------------------------------------------------------ MAC counter


def test_ideal_mac_ratio_reproduces_reference_19_of_49():
    geo = Geometry(batch=1, height=224, width=224, visible=19)
    assert ideal_ratio("atto", geo) == pytest.approx(0.388, abs=5e-4)
    for size in MODEL_SIZES:  # every layer scales with the visible sites
        assert ideal_ratio(size, geo) == pytest.approx(19 / 49, abs=1e-9)


@pytest.mark.parametrize("size", list(MODEL_SIZES))
def test_dense_macs_match_the_papers_gflops(size):
    """The dense count at 224 (no head) is within 3% of the paper's classifier GFLOPs."""
    macs = phase_macs(size, Geometry(1, 224, 224, 49), "dense", "encoder_fwd")
    paper = MODEL_SIZES[size].gflops * 1e9
    assert abs(macs / paper - 1) < 0.03, f"{size}: {macs / 1e9:.3f} G vs paper {paper / 1e9} G"


def test_mac_breakdown_pointwise_dominates_and_modes_are_ordered():
    geo = Geometry(batch=2, height=224, width=224, visible=38)
    shares = []
    for size in ("atto", "tiny", "base"):
        dense = encoder_layer_macs(size, geo, "dense")
        shares.append(sum(v for k, v in dense.items() if "pwconv" in k) / sum(dense.values()))
        ideal = sum(encoder_layer_macs(size, geo, "ideal").values())
        executed = sum(encoder_layer_macs(size, geo, "executed").values())
        assert ideal < executed < sum(dense.values())
    # pointwise share: atto 0.88, tiny 0.93, base 0.96 (stem, downsampling and dwconv shrink)
    assert 0.85 < shares[0] < shares[1] < shares[2] < 0.99, shares
    all_visible = Geometry(batch=2, height=224, width=224, visible=98)
    assert ideal_ratio("tiny", all_visible, "train_step") == pytest.approx(1.0)
    fwd = phase_macs("atto", geo, "dense", "encoder_fwd")
    stem = encoder_layer_macs("atto", geo, "dense")["stem"]
    assert phase_macs("atto", geo, "dense", "encoder_fwd_bwd") == 3 * fwd - stem
    assert phase_macs("atto", geo, "dense", "train_step") > 3 * fwd - stem
    with pytest.raises(ValueError, match="unknown phase"):
        phase_macs("atto", geo, "dense", "backward")


# ---------------------------------------------------------------------- timing and memory


def test_rotation_alternates_the_order_and_summary_statistics():
    vs = ["sparse", "dense"]
    assert [rotation(vs, r) for r in range(3)] == [vs, vs[::-1], vs]
    s = summarize([5.0, 1.0, 3.0, 2.0, 100.0])
    assert s["median_ms"] == 3.0 and s["min_ms"] == 1.0 and s["max_ms"] == 100.0
    assert s["q1_ms"] == 2.0 and s["q3_ms"] == 5.0 and s["iqr_ms"] == 3.0
    assert summarize([4.0])["iqr_ms"] == 0.0
    # load that doubles every time in repetition 2 cancels in the paired ratio
    assert paired_ratio([1.0, 4.0, 1.0], [2.0, 8.0, 2.0]) == 0.5
    assert paired_ratio([1.0], None) is None


def test_cpu_peak_memory_tracks_live_tensors():
    mb = 1024 * 1024

    def phase():
        a = torch.ones(64 * mb // 4)  # 64 MiB, touched
        b = torch.ones(32 * mb // 4)  # peak: 96 MiB live
        del a
        c = torch.ones(16 * mb // 4)
        return b, c

    peak, before, method = measure_cpu(phase)
    assert method in ("rss-hwm", "rss-sampled")
    assert 88 <= (peak - before) / mb <= 110, f"growth {(peak - before) / mb:.1f} MiB, want ~96"
    peak, before, _ = measure_cpu(lambda: None)
    assert (peak - before) / mb < 8


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(grids={"g": Grid(("atto",), (0.6,), (2,), ((100, 64),))}), "multiple of the patch"),
        (dict(grids={"g": Grid(("atto",), (1.0,), (2,), ((64, 64),))}), "mask_ratio"),
        (dict(grids={"g": Grid(("atto",), (0.6,), (0,), ((64, 64),))}), "batches must be"),
        (dict(grids={}), "no grids"),
        (dict(phases=("encoder_fwd", "decode")), "phases must be"),
        (dict(repeats=0), "repeats >= 1"),
        (dict(device="tpu"), "device must be"),
    ],
)
def test_bad_settings_fail_before_any_work(tmp_path, change, message):
    settings = tiny_settings(**change)
    with pytest.raises(ValueError, match=message):
        validate(settings)
    with pytest.raises(ValueError, match=message):
        run_bench(settings, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_grid_keys_and_names_are_checked():
    from fcmae.bench.config import grid_from_mapping

    ok = dict(sizes=["atto"], mask_ratios=[0.6], batches=[2], resolutions=[64, [64, 96]])
    grid = grid_from_mapping("g", {**ok, "depthwise_impls": ["auto", "minkowski"]})
    assert grid.resolutions == ((64, 64), (64, 96)) and grid.impls == ("canvas", "minkowski")
    with pytest.raises(ValueError, match="sizes must be"):
        grid_from_mapping("g", {**ok, "sizes": ["gigantic"]})
    with pytest.raises(ValueError, match="unknown key"):
        grid_from_mapping("g", {**ok, "batch": [2]})
    with pytest.raises(ValueError, match="depthwise_impls"):
        grid_from_mapping("g", {**ok, "depthwise_impls": ["spconv"]})


def test_expand_merges_duplicate_cases_and_lists_variants():
    g1 = Grid(("atto",), (0.6,), (2,), ((64, 64),), ("canvas",))
    g2 = Grid(("atto",), (0.6, 0.3), (2,), ((64, 64),), ("minkowski",))
    cases = expand(BenchSettings(grids={"a": g1, "b": g2}))
    assert [c.mask_ratio for c in cases] == [0.6, 0.3]
    assert cases[0].impls == ("canvas", "minkowski")
    names = [v.name for v in variants(cases[0], ("sparse", "dense"))]
    assert names == ["sparse/canvas", "sparse/minkowski", "dense"]
    assert variants(cases[1], ("dense",)) == [Variant("dense")]


# -------------------------------------------------------------------------------- presets


def test_presets_compose_and_quick_holds_the_target_case():
    from hydra import compose, initialize_config_dir

    from fcmae.cli.bench import CONF_DIR, register_presets, settings_from_config

    register_presets()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        settings = {}
        for preset in ("quick", "full", "debug"):
            cfg = compose("bench", overrides=[f"preset={preset}"])
            from omegaconf import OmegaConf

            settings[preset] = settings_from_config(OmegaConf.to_container(cfg, resolve=True))
    quick = {c.key: c for c in expand(settings["quick"])}
    assert ("tiny", 0.6, 16, 224, 224) in quick and ("atto", 0.6, 8, 224, 224) in quick
    assert "minkowski" not in quick[("tiny", 0.6, 16, 224, 224)].impls
    full = expand(settings["full"])
    assert {c.mask_ratio for c in full} >= {0.0, 0.6, 0.9}
    assert len({c.model for c in full}) >= 5 and len({c.batch for c in full}) >= 3
    assert len({(c.height, c.width) for c in full}) >= 3


# ----------------------------------------------------------------------------- end to end


def test_tiny_benchmark_end_to_end_writes_every_file(tmp_path):
    out = tmp_path / "run"
    records = run_bench(tiny_settings(command="test"), out)
    for name in (*OUTPUT_FILES, *PLOTS):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not (out / ".mem").exists()
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert set(REQUIRED) <= set(rows[0]) and tuple(rows[0]) == COLUMNS
    assert len(rows) == len(records) == 6  # (sparse/canvas, dense) x 3 phases
    data = json.loads((out / "results.json").read_text())
    assert [r["phase"] for r in data] == [r["phase"] for r in records]
    for r in data:
        assert set(REQUIRED) <= set(r) and len(r["times_ms"]) == 1
        assert r["median_ms"] > 0 and r["peak_mem_mb"] > 0 and r["macs"] > 0
        assert r["mem_method"] in ("rss-hwm", "rss-sampled")
        if r["engine"] == "dense":
            assert r["time_ratio"] == r["time_ratio_paired"] == r["mac_ratio"] == 1.0
            assert r["max_abs_diff"] is None
        else:  # mask 0.5 of a 2x2 grid: 2 of 4 patches visible
            assert r["visible_fraction"] == 0.5
            if r["phase"] == "train_step":  # + the decoder, dense in both engines
                assert 0.5 < r["mac_ratio"] < 1.0
            else:
                assert r["mac_ratio"] == pytest.approx(0.5)
            assert r["max_abs_diff"] < 1e-4 * max(1.0, r["out_max_abs"])
    train = [r for r in data if r["phase"] == "train_step"]
    assert all(r["peak_mem_mb"] >= r["work_mem_mb"] > 0 for r in train)
    md = (out / "results.md").read_text()
    assert md.count("\n| atto |") == 6 and "test" in md
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert all("/" in k for k in line) and "bench/median_ms" in line


def _cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fcmae.cli.bench", *args, f"paths.runs_root={tmp_path}"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_cli_runs_a_preset_and_prints_the_run_dir(tmp_path):
    args = ["preset=debug", "grids.debug.depthwise_impls=[canvas]", "memory=false"]
    args += ["plots=false", "phases=[encoder_fwd]", "threads=1"]
    proc = _cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    run_dir = Path(result["run_dir"])
    assert result["records"] == 2 and (run_dir / "results.csv").is_file()
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["command"].startswith("fcmae-bench preset=debug")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["preset=nope"], "unknown preset"),
        (["preset=debug", "grids.debug.resolutions=[100]"], "multiple of the patch size"),
        (["preset=debug", "repeats=0"], "repeats >= 1"),
    ],
)
def test_cli_bad_input_is_one_line_and_no_run_dir(tmp_path, args, message):
    proc = _cli(args, tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("fcmae-bench: error:")
    assert not any(tmp_path.iterdir())


def test_case_labels_are_readable():
    assert Case("tiny", 0.6, 16, 224, 224, ("canvas",)).label() == "tiny 224x224 b16 mask 0.6"
