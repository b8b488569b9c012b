"""The Hydra tree: every option composes, every experiment runs its debug form, errors are
one line before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from fcmae import MODEL_SIZES
from fcmae.cli import CONF_DIR, preflight, register_configs
from fcmae.pretrain import CHECKPOINT, pretrain_from_spec, specs_from_config

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
NEEDS_ROOT = {"in1k_base", "imagefolder_tiny"}


def _compose(*overrides: str) -> dict:
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return OmegaConf.to_container(compose("pretrain", list(overrides)), resolve=True)


def test_groups_exist():
    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    assert {"engine", "data", "optim", "schedule", "logger", "trainer", "experiment",
            "debug"} <= groups  # fmt: skip
    assert set(EXPERIMENTS) >= {"quickstart", "in1k_base", "imagefolder_tiny"}


@pytest.mark.parametrize("size", list(MODEL_SIZES))
def test_model_group_comes_from_the_registry(size):
    cfg = _compose(f"model={size}", "~experiment")
    assert cfg["model"]["size"] == size
    assert "depths" not in cfg["model"] and "dims" not in cfg["model"]
    assert not (CONF_DIR / "model").exists()  # no yaml copies of the registry


def test_paper_defaults_without_experiment():
    spec = specs_from_config(_compose("~experiment"))
    assert spec.model.mask_ratio == 0.6 and spec.model.patch_size == 32
    assert spec.model.decoder_dim == 512 and spec.model.decoder_depth == 1
    assert spec.model.norm_pix_loss
    assert spec.optim.blr == 1.5e-4 and spec.optim.betas == (0.9, 0.95)
    assert spec.optim.weight_decay == 0.05 and spec.optim.lr is None
    assert spec.schedule.warmup_epochs == 40 and spec.schedule.min_lr == 0.0
    assert spec.data.crop_scale == (0.2, 1.0) and spec.data.interpolation == "bicubic"
    assert spec.data.input_size == (224, 224) and spec.trainer.precision == "fp32"


def test_in1k_base_is_the_papers_recipe():
    spec = specs_from_config(_compose("experiment=in1k_base", "data.root=/"))
    assert spec.model.size == "base" and spec.model.engine == "sparse"
    t = spec.trainer
    assert t.batch_size * t.accum_steps * 8 == 4096  # on 8 processes
    assert t.epochs == 1600 and spec.schedule.warmup_epochs == 40
    assert spec.data.name == "imagefolder" and spec.data.input_size == (224, 224)


def test_quickstart_is_the_default_and_rectangles_compose():
    spec = specs_from_config(_compose())
    assert spec.model.size == "atto" and spec.model.engine == "sparse"
    assert spec.data.name == "samples" and spec.trainer.device == "cpu"
    assert specs_from_config(_compose("data.input_size=[64,128]")).data.input_size == (64, 128)
    assert specs_from_config(_compose("engine=sparse_minkowski")).model.depthwise_impl == (
        "minkowski"
    )


def _image_root(tmp_path) -> Path:
    root = tmp_path / "images" / "class0"
    root.mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (96, 80), (60 * i, 120, 30)).save(root / f"{i}.jpg")
    return root.parent


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_its_debug_form(experiment, tmp_path):
    overrides = [f"experiment={experiment}", "debug=default", "trainer.num_threads=1"]
    if experiment in NEEDS_ROOT:
        overrides.append(f"data.root={_image_root(tmp_path)}")
    spec = preflight("pretrain", overrides, specs_from_config)
    result = pretrain_from_spec(spec, tmp_path / "run")
    assert result.step == 2 and all(map(lambda x: x == x, result.losses))  # finite, not NaN
    assert (tmp_path / "run" / CHECKPOINT).is_file()
    assert (tmp_path / "run" / "reconstruction.png").is_file()


def test_wandb_logger_offline(tmp_path):
    spec = preflight("pretrain", ["debug=default", "logger=wandb", "trainer.num_threads=1"],
                     specs_from_config)  # fmt: skip
    assert spec.logger.mode == "offline"
    pretrain_from_spec(spec, tmp_path, config={"model": {"size": "atto"}})
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb"))
    assert list((runs[0] / "files" / "media" / "images").rglob("*.png"))  # reconstruction


ERRORS = [
    (["model=gigantic"], "unknown model option 'gigantic'; choose one of: atto, femto"),
    (["engine=cuda"], "unknown engine option 'cuda'"),
    (["experiment=nope"], "unknown experiment option 'nope'"),
    (["trainer.batchsize=4"], "unknown config key 'trainer.batchsize'"),
    (["data=imagefolder"], "data.root is required for data=imagefolder"),
    (["data=imagefolder", "data.root=/no/such/dir"], "is not a directory"),
    (["trainer.batch_size=0"], "trainer.batch_size must be a positive integer, got 0"),
    (["trainer.batch_size=-3"], "trainer.batch_size must be a positive integer"),
    (["trainer.accum_steps=0"], "trainer.accum_steps must be a positive integer"),
    (["trainer.precision=bf16"], "precision=bf16 is not supported by engine=sparse"),
    (["trainer.precision=fp16"], "trainer.precision='fp16' is not valid"),
    (["data.input_size=100"], "must be positive multiples of the patch size 32"),
    (["data.crop_scale=[0.5,0.2]"], "data.crop_scale must satisfy"),
    (["model.mask_ratio=1.0"], "model.mask_ratio must be a number in"),
    (["optim.weight_decay=-1"], "optim.weight_decay must be a number"),
    (["optim.clip_grad=0"], "optim.clip_grad must be positive"),
    (["resume=/no/such/run"], "resume=/no/such/run: no checkpoint at"),
    (["logger=wandb", "logger.mode=loud"], "logger.mode='loud' is not valid"),
    (["data.images=[astronaut,unicorn]"], "data.images has unknown ['unicorn']"),
    (["data.std=[0.2,0.2]"], "data.std must be three numbers"),
    (["data.input_size=[64]"], "data.input_size must be a number or a pair"),
    (["model.norm_pix_loss=maybe"], "model.norm_pix_loss must be true or false"),
]


@pytest.mark.parametrize(("overrides", "message"), ERRORS)
def test_config_errors_are_one_clear_line(overrides, message):
    with pytest.raises(ValueError) as err:
        preflight("pretrain", overrides, specs_from_config)
    text = str(err.value)
    assert message in text and "\n" not in text


def test_cli_config_error_exits_before_any_work(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fcmae.cli.pretrain", "trainer.batch_size=0",
         f"hydra.run.dir={run}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fcmae-pretrain: error: trainer.batch_size must be a positive integer, got 0"
    ]
    assert not run.exists()  # nothing half-written
