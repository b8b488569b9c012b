"""The pretraining loop: resume equality, graceful stop, non-finite loss, outputs, bf16."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fcmae.cli import preflight
from fcmae.engine.metrics import read_metrics
from fcmae.model import FCMAE
from fcmae.pretrain import (
    CHECKPOINT,
    NonFiniteLossError,
    pretrain_from_spec,
    sample_masks,
    specs_from_config,
)

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "fcmae.cli.pretrain"]
# debug=default: 64x64 images, batch 2, no picture unless asked
FAST = ["debug=default", "trainer.recon_images=0", "trainer.num_threads=1"]


def spec_for(*overrides: str):
    return preflight("pretrain", [*FAST, *overrides], specs_from_config)


def test_outputs_of_a_run(tmp_path):
    spec = spec_for("trainer.recon_images=2")
    result = pretrain_from_spec(spec, tmp_path / "run", config={"note": "composed config"})
    run = tmp_path / "run"
    assert result.step == 2 and len(result.losses) == 2
    assert {p.name for p in run.iterdir()} >= {
        "checkpoint.pt", "metrics.jsonl", "config.yaml", "train.log", "reconstruction.png",
    }  # fmt: skip
    recs = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2]
    for key in ("train/loss", "train/lr", "train/img_per_s", "train/visible_fraction",
                "train/grad_norm", "sys/peak_mem_mb", "data/skipped_images"):  # fmt: skip
        assert key in recs[-1], key
    # 64x64 images -> 2x2 patches, int(4 * 0.4) = 1 visible
    assert recs[-1]["train/visible_fraction"] == pytest.approx(0.25)
    ckpt = torch.load(run / CHECKPOINT, weights_only=False)
    assert ckpt["format"] == "fcmae-pretrain/1" and ckpt["step"] == 2
    assert ckpt["config"] == {"note": "composed config"}
    assert any(k.endswith("dwconv.kernel") for k in ckpt["model"])  # sparse layout
    assert len(ckpt["rng"]) == 1 and "optimizer" in ckpt


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("engine", ["sparse", "dense"])
def test_resume_gives_identical_losses_and_weights(tmp_path, engine):
    # 4 steps per epoch: the split at step 5 falls inside the second epoch.
    common = [f"engine={engine}", "trainer.max_steps=10", "data.samples_per_epoch=8",
              "trainer.deterministic=true", "trainer.ckpt_every=3"]  # fmt: skip
    full = pretrain_from_spec(spec_for(*common), tmp_path / "full")
    first = pretrain_from_spec(spec_for(*common, "trainer.stop_at=5"), tmp_path / "a")
    assert first.step == 5
    second = pretrain_from_spec(spec_for(*common, f"resume={tmp_path / 'a'}"), tmp_path / "b")
    assert second.step == 10
    assert first.losses + second.losses == full.losses  # exact, not approximate
    w_full, w_resumed = _weights(full.model), _weights(second.model)
    for k, v in w_full.items():
        assert torch.equal(v, w_resumed[k]), k
    ckpt_full = torch.load(tmp_path / "full" / CHECKPOINT, weights_only=False)
    ckpt_res = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=False)
    for k, v in ckpt_full["model"].items():
        assert torch.equal(v, ckpt_res["model"][k]), k


def test_resume_auto_picks_latest_run(tmp_path):
    runs = tmp_path / "runs"
    pretrain_from_spec(spec_for(f"paths.runs_root={runs}", "trainer.max_steps=4",
                                "trainer.stop_at=1"), runs / "one")  # fmt: skip
    time.sleep(0.05)
    pretrain_from_spec(spec_for(f"paths.runs_root={runs}", "trainer.max_steps=4",
                                "trainer.stop_at=3"), runs / "two")  # fmt: skip
    spec = spec_for(f"paths.runs_root={runs}", "trainer.max_steps=4", "resume=auto")
    result = pretrain_from_spec(spec, runs / "three")
    assert result.step == 4 and len(result.losses) == 1  # continued from "two" at step 3


def test_resume_refuses_other_model(tmp_path):
    pretrain_from_spec(spec_for(), tmp_path / "a")
    with pytest.raises(ValueError, match="resume with model=atto"):
        pretrain_from_spec(spec_for("model=femto", f"resume={tmp_path / 'a'}"), tmp_path / "b")


def test_masks_do_not_depend_on_batch_split():
    whole = sample_masks(4, (3, 3), 0.6, seed=7, step=3, first=0)
    halves = torch.cat(
        [sample_masks(2, (3, 3), 0.6, 7, 3, 0), sample_masks(2, (3, 3), 0.6, 7, 3, 2)]
    )
    assert torch.equal(whole, halves)
    assert (whole.flatten(1).sum(1) == 6).all()  # 9 patches, 3 visible
    assert not torch.equal(whole, sample_masks(4, (3, 3), 0.6, seed=7, step=4, first=0))


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    pretrain_from_spec(spec_for("trainer.max_steps=6", "trainer.stop_at=2"), run)
    before = (run / CHECKPOINT).read_bytes()
    original = FCMAE.loss
    calls = {"n": 0}

    def flaky_loss(self, imgs, pred, mask):
        calls["n"] += 1
        loss = original(self, imgs, pred, mask)
        return loss * float("nan") if calls["n"] >= 2 else loss

    monkeypatch.setattr(FCMAE, "loss", flaky_loss)
    spec = spec_for("trainer.max_steps=6", "trainer.ckpt_every=1", f"resume={run}")
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 4"):
        pretrain_from_spec(spec, run)
    # step 3 was fine and saved (ckpt_every=1); step 4 never reached the weights
    ckpt = torch.load(run / CHECKPOINT, weights_only=False)
    assert ckpt["step"] == 3
    assert (run / CHECKPOINT).read_bytes() != before
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_dense_engine_bf16_autocast_and_sparse_checkpoint(tmp_path):
    result = pretrain_from_spec(spec_for("engine=dense", "trainer.precision=bf16"), tmp_path)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    assert ckpt["engine"] == "dense"
    assert any(k.endswith("dwconv.kernel") for k in ckpt["model"])  # stored sparse layout


def _run_cli(args, **kwargs):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([*CLI, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, **kwargs)  # fmt: skip


def test_cli_runs_debug_and_prints_one_json_line(tmp_path):
    proc = _run_cli([*FAST, f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["step"] == 2 and Path(summary["checkpoint"]).is_file()
    assert (tmp_path / ".hydra" / "config.yaml").is_file()


def test_sigterm_to_the_process_group_saves_and_exits_cleanly(tmp_path):
    # As a scheduler does: SIGTERM to every process of the job, data loader workers included.
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [*CLI, *FAST, "trainer.max_steps=500", "data.num_workers=1", f"hydra.run.dir={tmp_path}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "SIGTERM received" in err
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    assert 1 <= ckpt["step"] < 500
    assert json.loads(out.strip().splitlines()[-1])["stopped_by"] == "SIGTERM"
    assert read_metrics(metrics)[-1]["step"] <= ckpt["step"]
