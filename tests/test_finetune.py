"""Finetuning: it learns, resumes exactly, starts from pretrained weights, runs DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from fcmae import create_fcmae
from fcmae.cli import preflight
from fcmae.cli.finetune import expand_overrides
from fcmae.engine.metrics import read_metrics
from fcmae.export import build_target, export_checkpoint, export_state_dict, to_canonical
from fcmae.finetune import (
    BEST,
    LAST,
    build_optimizer,
    finetune_from_spec,
    load_finetuned,
    specs_from_config,
)
from tests.conftest import free_port, randomize_

REPO = Path(__file__).resolve().parents[1]
# debug=default: digits at 32x32, 30 steps; one thread: tests share 2 cores with other jobs
FAST = ["debug=default", "trainer.num_threads=1"]


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread (the runs set it too, through trainer.num_threads=1); restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def spec_for(*overrides: str):
    return preflight("finetune", expand_overrides([*FAST, *overrides]), specs_from_config)


def _pretrain_checkpoint(path: Path, size: str = "atto") -> Path:
    model = randomize_(create_fcmae(size, "sparse"))
    torch.save({"model": model.state_dict(), "config": {}, "step": 1}, path)
    return path


def test_cli_debug_run_learns(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "fcmae.cli.finetune", *FAST, f"hydra.run.dir={tmp_path}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["step"] == 30
    assert summary["val/top1"] > 25.0, summary  # chance is 10% (10 classes)
    records = read_metrics(tmp_path / "metrics.jsonl")
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert losses[-1] < losses[0] - 0.1, losses  # the training loss falls (window means)
    assert any("val/top5" in r and "val_ema/top1" in r for r in records)
    model, classes = load_finetuned(summary["best_checkpoint"])
    assert classes == [str(d) for d in range(10)] and model.head.fc.out_features == 10
    assert (tmp_path / LAST).is_file() and (tmp_path / "train.log").is_file()


def test_resume_is_exact(tmp_path):
    # mixup (numpy RNG), drop path (torch RNG) and EMA all on: resume must restore each
    extra = ["trainer.max_steps=6", "aug.mixup=0.8", "aug.cutmix=1.0", "data.val_fraction=0.05"]
    full = finetune_from_spec(spec_for(*extra), tmp_path / "full")
    first = finetune_from_spec(spec_for(*extra, "trainer.stop_at=3"), tmp_path / "a")
    assert first.step == 3 and first.stopped_by == "trainer.stop_at=3"
    assert (tmp_path / "a" / LAST).is_file() and not first.evals  # no epoch end yet
    rest = finetune_from_spec(spec_for(*extra, f"resume={tmp_path / 'a'}"), tmp_path / "b")
    assert rest.step == 6
    assert first.losses + rest.losses == full.losses
    a, b = full.model.state_dict(), rest.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ema_full = torch.load(tmp_path / "full" / LAST, weights_only=False)["ema"]
    ema_rest = torch.load(tmp_path / "b" / LAST, weights_only=False)["ema"]
    assert all(torch.equal(ema_full[k], ema_rest[k]) for k in ema_full)
    assert full.evals[-1]["val/top1"] == rest.evals[-1]["val/top1"]


def test_bf16_autocast(tmp_path):
    res = finetune_from_spec(
        spec_for("trainer.precision=bf16", "trainer.max_steps=2", "data.val_fraction=0.05"),
        tmp_path / "run",
    )
    assert res.step == 2 and all(np.isfinite(res.losses))
    assert next(res.model.parameters()).dtype == torch.float32  # autocast, fp32 weights


def test_init_from_pretraining_checkpoint_and_export(tmp_path):
    ckpt = _pretrain_checkpoint(tmp_path / "checkpoint.pt")
    res = finetune_from_spec(
        spec_for(f"pretrained={ckpt}", "trainer.max_steps=1", "optim.lr=0", "schedule.min_lr=0"),
        tmp_path / "from_ckpt",
    )
    # lr 0: the weights after one step are the pretrained ones (head new)
    want = export_state_dict(to_canonical(torch.load(ckpt)["model"]), "timm")
    got = res.model.state_dict()
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    exported = tmp_path / "atto.safetensors"
    export_checkpoint(ckpt, exported, "timm")
    res2 = finetune_from_spec(
        spec_for(
            f"pretrained={exported}", "trainer.max_steps=1", "optim.lr=0", "schedule.min_lr=0"
        ),
        tmp_path / "from_export",
    )
    got2 = res2.model.state_dict()
    assert all(torch.equal(got2[k], v) for k, v in want.items())


def test_pretrain_export_finetune_end_to_end(tmp_path):
    from fcmae.pretrain import pretrain_from_spec
    from fcmae.pretrain import specs_from_config as pretrain_specs

    fast = ["debug=default", "trainer.recon_images=0", "trainer.num_threads=1"]
    pre = pretrain_from_spec(preflight("pretrain", fast, pretrain_specs), tmp_path / "pretrain")
    exported = tmp_path / "atto.safetensors"
    result = export_checkpoint(pre.checkpoint, exported, "timm", do_verify=True)
    assert result.ok and result.layout == "fcmae (sparse)", result.checks
    res = finetune_from_spec(
        spec_for(f"pretrained={exported}", "trainer.max_steps=2"), tmp_path / "finetune"
    )
    assert res.step == 2 and (tmp_path / "finetune" / BEST).is_file()


def test_pretrained_of_another_size_is_refused(tmp_path):
    ckpt = _pretrain_checkpoint(tmp_path / "atto.pt")
    with pytest.raises(ValueError, match="holds ConvNeXt V2-atto weights, but the model is femto"):
        finetune_from_spec(spec_for(f"pretrained={ckpt}", "model=femto"), tmp_path / "run")
    assert not (tmp_path / "run" / LAST).exists()


def test_optimizer_groups_layer_decay_and_no_decay():
    model = build_target("timm", "atto", num_classes=10)
    spec = spec_for()
    opt = build_optimizer(model, spec.optim, 1e-3)
    params = dict(model.named_parameters())
    names = {id(p): n for n, p in params.items()}
    decay_of, scale_of = {}, {}
    for g in opt.param_groups:
        for p in g["params"]:
            decay_of[names[id(p)]], scale_of[names[id(p)]] = g["weight_decay"], g["lr_scale"]
    assert len(decay_of) == len(names)  # every parameter is optimised
    for n, wd in decay_of.items():  # biases, norm weights and GRN gamma/beta are all 1-D
        assert wd == (0.0 if params[n].ndim <= 1 else spec.optim.weight_decay), n
    grn = [n for n in names.values() if ".grn." in n]
    assert len(grn) == 2 * 12 and all(decay_of[n] == 0.0 for n in grn)
    assert scale_of["head.fc.weight"] == 1.0
    assert scale_of["stem.0.weight"] < scale_of["stages.2.blocks.0.mlp.fc1.weight"] < 1.0


def _write_folder(root: Path, classes=("cat", "dog"), per_class: int = 6) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 100, (40, 40, 3)) + 150 * c
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i}.png")


def test_imagefolder_train_val(tmp_path):
    _write_folder(tmp_path / "data")
    spec = spec_for(
        "data=imagefolder",
        f"data.root={tmp_path / 'data'}",
        "data.input_size=32",
        "data.num_workers=0",
        "trainer.batch_size=4",
        "trainer.max_steps=3",
    )
    res = finetune_from_spec(spec, tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / BEST, weights_only=False)
    assert ckpt["classes"] == ["cat", "dog"] and res.step == 3
    assert 0.0 <= res.evals[-1]["val/top1"] <= 100.0 and res.evals[-1]["val/top5"] == 100.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=imagefolder"], "data.root is required"),
        (["data=imagefolder", "data.root=/nonexistent"], "has no train/ or val/ folder"),
        (["pretrained=/nonexistent.pt"], "pretrained=/nonexistent.pt does not exist"),
        (["aug.mixup=0.8", "trainer.batch_size=5"], "must be even with mixup"),
        (["data.input_size=40"], "multiple of 32"),
        (["eval.best_metric=val_ema/top1", "ema.enabled=false"], "needs ema.enabled=true"),
        (["data=nope"], "unknown finetune/data option 'nope'"),
    ],
)
def test_bad_config_is_one_line(overrides, message):
    with pytest.raises(ValueError, match=message) as info:
        spec_for(*overrides)
    assert "\n" not in str(info.value)


def test_mismatched_class_folders(tmp_path):
    _write_folder(tmp_path / "data")
    (tmp_path / "data" / "val" / "dog").rename(tmp_path / "data" / "val" / "bird")
    with pytest.raises(ValueError, match="different classes"):
        spec_for("data=imagefolder", f"data.root={tmp_path / 'data'}")


def test_expand_overrides():
    args = ["data=imagefolder", "data.root=/x", "+debug=default", "~experiment", "model=tiny"]
    assert expand_overrides(args) == [
        "finetune/data@data=imagefolder",
        "data.root=/x",
        "+finetune/debug=default",
        "~finetune/experiment",
        "model=tiny",
    ]


# -- DDP: 2 CPU processes (gloo) against one process with the same global batch --------------

DDP_COMMON = ["trainer.max_steps=2", "model.drop_path_rate=0", "data.val_fraction=0.05"]


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    spec = spec_for(*DDP_COMMON, "trainer.batch_size=16")
    try:
        res = finetune_from_spec(spec, os.path.join(out, "run"))
        torch.save(
            {"losses": res.losses, "weights": res.model.state_dict(), "evals": res.evals},
            os.path.join(out, f"rank{rank}.pt"),
        )
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.timeout(300)
def test_two_processes_match_one_process(tmp_path):
    mp.spawn(_rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    single = finetune_from_spec(spec_for(*DDP_COMMON, "trainer.batch_size=32"), tmp_path / "one")
    for k, v in r0["weights"].items():
        assert torch.equal(v, r1["weights"][k]), k  # DDP replicas stay identical
        err = (v - single.model.state_dict()[k]).abs().max().item()
        assert err < 1e-5, f"{k}: 2 processes vs 1 differ by {err:.3g}"
    assert r0["losses"] == pytest.approx(single.losses, rel=1e-4)
    assert r0["evals"][-1]["val/top1"] == pytest.approx(single.evals[-1]["val/top1"])
