"""Reconstruction pictures: the four panels, the grid, and fcmae-reconstruct."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcmae import create_fcmae
from fcmae.cli import preflight
from fcmae.masking import upsample_mask
from fcmae.pretrain import pretrain_from_spec, sample_masks, specs_from_config
from fcmae.visualize import (
    COLUMNS,
    reconstruct_checkpoint,
    reconstruction_grid,
    reconstruction_panels,
)

REPO = Path(__file__).resolve().parents[1]


def _randomise_grn(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "grn" in name:
                p.normal_(0, 0.5)  # zero-initialised: randomise so they matter


def test_panels_paste_visible_patches_back():
    torch.manual_seed(0)
    model = create_fcmae("atto", "dense")
    _randomise_grn(model)
    imgs = torch.randn(2, 3, 64, 96)
    mask = sample_masks(2, (2, 3), 0.6, seed=0, step=0, first=0)  # (2, 2, 3)
    panels = reconstruction_panels(model, imgs, mask)
    assert list(panels) == list(COLUMNS)
    pix = upsample_mask(mask, 32).unsqueeze(1).bool().expand_as(imgs)  # (2, 3, 64, 96)
    assert torch.equal(panels["masked"][pix], torch.zeros_like(imgs[pix]))
    assert torch.equal(panels["masked"][~pix], imgs[~pix])
    assert torch.equal(panels["pred + visible"][~pix], imgs[~pix])
    torch.testing.assert_close(panels["pred + visible"][pix], panels["prediction"][pix])
    assert not torch.allclose(panels["prediction"], imgs)
    grid = reconstruction_grid(model, imgs, mask, pad=4, header=16)
    assert grid.shape == (16 + 2 * (64 + 4) + 4, 4 * (96 + 4) + 4, 3) and grid.dtype == np.uint8
    assert model.training  # restored after the eval-mode forward


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    spec = preflight("pretrain", ["debug=default", "trainer.recon_images=0",
                                  "trainer.num_threads=1"], specs_from_config)  # fmt: skip
    return pretrain_from_spec(spec, run).checkpoint


def test_sparse_and_dense_pictures_agree(checkpoint, tmp_path):
    a = reconstruct_checkpoint(checkpoint, tmp_path / "d.png", num_images=2, engine="dense")
    b = reconstruct_checkpoint(checkpoint, tmp_path / "s.png", num_images=2, engine="sparse")
    da, db = (np.asarray(Image.open(p), dtype=np.int16) for p in (a, b))
    assert da.shape == (16 + 2 * 68 + 4, 4 * 68 + 4, 3)  # trained at 64x64
    assert np.abs(da - db).max() <= 1


def test_cli_writes_png_for_given_images(checkpoint, tmp_path):
    src = tmp_path / "photo.jpg"
    Image.new("RGB", (150, 100), (200, 50, 20)).save(src)
    out = tmp_path / "grid.png"
    proc = subprocess.run(
        [sys.executable, "-m", "fcmae.cli.reconstruct", f"checkpoint={checkpoint.parent}",
         f"images=[{src}]", f"out={out}", "input_size=[64,96]", "mask_ratio=0.75"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert Image.open(out).size == (4 * 100 + 4, 16 + 68 + 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "photo.jpg"]  # no litter


def test_cli_errors_are_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fcmae.cli.reconstruct", f"checkpoint={tmp_path}/none.pt"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"fcmae-reconstruct: error: checkpoint={tmp_path}/none.pt: no such file; pass an "
        "fcmae-pretrain checkpoint.pt"
    ]
