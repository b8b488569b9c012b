"""General job utilities (fcmae.engine): schedule, param groups, metrics, progress, seeds."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from torch import nn

from fcmae.engine import (
    ConfigReader,
    MetricsWriter,
    Progress,
    WarmupCosine,
    autocast_context,
    check_precision,
    derive_seed,
    param_groups,
    scaled_lr,
    setup_logging,
)
from fcmae.engine.metrics import read_metrics


def test_warmup_cosine_shape():
    sched = WarmupCosine(lr=1.0, total_steps=110, warmup_steps=10, min_lr=0.1)
    lrs = [sched.lr_at(s) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1)  # first update already has a non-zero lr
    assert lrs[9] == pytest.approx(1.0)  # end of warm-up
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert sched.lr_at(10_000) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="total_steps"):
        WarmupCosine(1.0, 0)


def test_schedule_applies_lr_scale():
    model = nn.Linear(3, 3)
    groups = param_groups(model, 0.05, lr_scale=lambda name: 0.5 if "bias" in name else 1.0)
    opt = torch.optim.AdamW(groups, lr=0.0)
    WarmupCosine(lr=2.0, total_steps=10).apply(opt, 0)
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == pytest.approx([1.0, 2.0])


def test_param_groups_no_decay():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.norm = nn.LayerNorm(4)
            self.gamma = nn.Parameter(torch.zeros(1, 1, 1, 4))  # GRN-like, 4-D
            self.mask_token = nn.Parameter(torch.zeros(1, 4, 1, 1))
            self.sparse_bias = nn.Parameter(torch.zeros(1, 4))  # MinkowskiEngine bias (1, C)
            self.frozen = nn.Parameter(torch.zeros(2, 2), requires_grad=False)

    groups = param_groups(M(), 0.05, no_decay_keywords=("bias", "gamma", "mask_token"))
    by_wd = {g["weight_decay"]: set(g["param_names"]) for g in groups}
    assert by_wd[0.05] == {"conv.weight", "sparse_bias"}  # name part is "sparse_bias"
    assert by_wd[0.0] == {"conv.bias", "norm.weight", "norm.bias", "gamma", "mask_token"}


def test_scaled_lr():
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)


def test_metrics_writer(tmp_path):
    sink_records = []
    with MetricsWriter(tmp_path / "m.jsonl", sinks=[lambda r, s: sink_records.append(s)]) as mw:
        mw.write(1, {"train/loss": torch.tensor(0.5), "train/lr": 1e-3})
        mw.write(2, {"train/loss": float("nan")})
        with pytest.raises(ValueError, match="slash-named"):
            mw.write(3, {"loss": 1.0})
    recs = read_metrics(tmp_path / "m.jsonl")
    assert [r["step"] for r in recs] == [1, 2]
    assert recs[0]["train/loss"] == 0.5 and recs[1]["train/loss"] == "nan"
    assert sink_records == [1, 2]
    json.dumps(recs)
    MetricsWriter(tmp_path / "off.jsonl", enabled=False).write(1, {"a/b": 1})
    assert not (tmp_path / "off.jsonl").exists()


def test_progress_stats(caplog):
    setup_logging(0, 1)
    with caplog.at_level(logging.INFO, logger="fcmae.engine.progress"):
        p = Progress(total_steps=4, log_every=2, bar=False)
        for step in range(1, 5):
            stats = p.update(step, images=8, loss=0.5)
        p.close()
    assert stats["img_per_s"] > 0 and stats["eta_s"] == 0 and stats["peak_mem_mb"] > 0
    lines = [r.getMessage() for r in caplog.records if "step" in r.getMessage()]
    assert len(lines) == 3  # steps 1, 2, 4
    assert "img_s=" in lines[-1] and "eta=" in lines[-1] and "mem=" in lines[-1]


def test_derive_seed_stable_and_distinct():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    seeds = {derive_seed(0, e, i) for e in range(3) for i in range(50)}
    assert len(seeds) == 150
    assert 0 <= derive_seed(2**40, 7) < 2**63


def test_precision_checks():
    assert check_precision("fp32", supports_bf16=False) == "fp32"
    with pytest.raises(ValueError, match="use precision=fp32"):
        check_precision("bf16", supports_bf16=False, who="the sparse engine")
    with pytest.raises(ValueError, match="unknown precision"):
        check_precision("fp16")
    with autocast_context("bf16", "cpu"):
        y = nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16


def test_config_reader_one_line_errors():
    r = ConfigReader({"a": {"n": 3, "x": 0.5, "flag": True, "pair": [1, 2], "req": "???"}})
    assert r.int("a.n") == 3 and r.float("a.x", high=1.0) == 0.5 and r.bool("a.flag", False)
    assert r.pair("a.pair", None) == (1.0, 2.0)
    assert r.pair("a.n", None, kind=int, scalar=True) == (3, 3)
    assert r.get("a.req", "fallback") == "fallback" and r.get("a.none.deeper") is None
    assert r.int("a.missing", None, optional=True) is None
    cases = [
        (lambda: r.int("a.x"), "a.x must be a positive integer, got 0.5"),
        (lambda: r.int("a.flag"), "a.flag must be a positive integer, got True"),
        (lambda: r.float("a.n", high=1.0), "a.n must be a number in [0.0, 1.0], got 3"),
        (lambda: r.choice("a.n", ("p", "q")), "a.n=3 is not valid; choose one of: p, q"),
        (lambda: r.pair("a.n", None), "a.n must be a pair of numbers [a, b], got 3"),
        (lambda: r.bool("a.n", False), "a.n must be true or false, got 3"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == message
