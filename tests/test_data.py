"""Pretraining data: bundled photographs, image folders, crops, deterministic sample order."""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image

from fcmae.data import (
    SAMPLE_IMAGES,
    DataSpec,
    ImageFolderImages,
    SampleImages,
    StepSampler,
    build_dataset,
    build_loader,
    collate,
)
from fcmae.data.datasets import skimage_data_dir
from fcmae.data.transforms import PretrainTransform, crop_box, denormalize
from fcmae.engine.repro import generator


def test_sample_images_ship_in_the_wheel_and_load_without_network(monkeypatch):
    import skimage.data

    def no_download(*args, **kwargs):
        raise AssertionError("a download was triggered")

    monkeypatch.setattr(skimage.data, "download_all", no_download)
    for name, fname in SAMPLE_IMAGES.items():
        assert (skimage_data_dir() / fname).is_file(), name
    ds = SampleImages(PretrainTransform((64, 96)), max_short_side=256)
    assert len(ds) == len(SAMPLE_IMAGES) >= 10
    img, skipped = ds[(0, 123)]
    assert img.shape == (3, 64, 96) and img.dtype == torch.float32 and skipped == 0
    assert torch.equal(img, ds[(0, 123)][0])  # the seed decides the crop
    assert not torch.equal(img, ds[(0, 124)][0])
    with pytest.raises(ValueError, match="unknown sample images"):
        SampleImages(PretrainTransform((64, 64)), ["astronaut", "nope"])


def test_crop_box_respects_bounds_scale_and_ratio():
    for i in range(300):
        gen = generator(5, i)
        top, left, h, w = crop_box(300, 451, (0.2, 1.0), (3 / 4, 4 / 3), gen)
        assert top >= 0 and top + h <= 300 and left >= 0 and left + w <= 451
        assert h * w >= 0.19 * 300 * 451
    # impossible ratio range: centred fallback with the aspect clamped into range
    top, left, h, w = crop_box(100, 100, (0.9, 1.0), (3.0, 4.0), generator(0))
    assert (h, w) == (33, 100) and (top, left) == (33, 0)


def test_transform_normalises_and_flips():
    img = Image.new("RGB", (200, 100), (124, 116, 104))  # about the ImageNet mean
    x = PretrainTransform((32, 64))(img, generator(0))
    assert x.shape == (3, 32, 64) and x.abs().max() < 0.02
    arr = torch.arange(200 * 100 * 3, dtype=torch.int64).remainder(251).to(torch.uint8)
    ramp = Image.fromarray(arr.view(100, 200, 3).numpy())
    t_flip = PretrainTransform((32, 64), scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0)
    t_keep = PretrainTransform((32, 64), scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    torch.testing.assert_close(t_flip(ramp, generator(1)), t_keep(ramp, generator(1)).flip(-1))
    back = denormalize(x.unsqueeze(0))
    assert back.min() >= 0 and back.max() <= 1


def _keys(**kw):
    return list(StepSampler(14, steps=4, batch_size=2, seed=3, epoch=1, **kw))


def test_sampler_splits_over_ranks_and_resumes():
    one = list(StepSampler(14, steps=4, batch_size=4, seed=3, epoch=1))
    r0, r1 = _keys(world_size=2, rank=0), _keys(world_size=2, rank=1)
    merged = []
    for s in range(4):  # step s: rank 0's two samples, then rank 1's
        merged += r0[2 * s : 2 * s + 2] + r1[2 * s : 2 * s + 2]
    assert merged == one
    assert _keys(world_size=2, rank=0, start_step=2) == r0[4:]
    # accumulation: micro-batches of 2 x 2 reproduce the global order as well
    acc = list(StepSampler(14, steps=4, batch_size=2, accum_steps=2, seed=3, epoch=1))
    assert acc == one
    # an epoch draws every image before repeating one, and epochs differ
    idx = [k[0] for k in one]
    assert sorted(idx[:14]) == list(range(14))
    assert idx != [k[0] for k in StepSampler(14, steps=4, batch_size=4, seed=3, epoch=2)]


def _write_images(folder, n, size=(80, 72)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", size, (40 * i % 255, 90, 200)).save(folder / f"img{i}.png")


def test_imagefolder_layouts_and_errors(tmp_path):
    spec = PretrainTransform((64, 64))
    _write_images(tmp_path / "nested" / "class_a", 2)
    _write_images(tmp_path / "nested" / "class_b", 3)
    assert len(ImageFolderImages(tmp_path / "nested", spec)) == 5
    _write_images(tmp_path / "flat", 4)
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    assert len(ImageFolderImages(tmp_path / "flat", spec)) == 4
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        ImageFolderImages(tmp_path / "empty", spec)
    with pytest.raises(ValueError, match="is not a directory"):
        ImageFolderImages(tmp_path / "missing", spec)
    with pytest.raises(ValueError, match="data.root is required"):
        build_dataset(DataSpec(name="imagefolder", root=None))


def test_corrupt_image_is_skipped_with_a_warning(tmp_path, caplog):
    _write_images(tmp_path, 3)
    (tmp_path / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated garbage")
    ds = ImageFolderImages(tmp_path, PretrainTransform((64, 64)))
    with caplog.at_level(logging.WARNING):
        img, skipped = ds[(1, 0)]
    assert img.shape == (3, 64, 64) and skipped == 1
    assert "skipping unreadable image" in caplog.text and "img1.png" in caplog.text
    sampler = StepSampler(len(ds), steps=1, batch_size=3, seed=0)
    imgs, n_skipped = next(iter(build_loader(ds, sampler, num_workers=0)))
    assert imgs.shape == (3, 3, 64, 64) and int(n_skipped) == 1
    imgs, total = collate([(torch.zeros(3, 2, 2), 1), (torch.zeros(3, 2, 2), 2)])
    assert imgs.shape == (2, 3, 2, 2) and int(total) == 3


def test_corrupt_image_counted_in_a_run(tmp_path):
    from fcmae.cli import preflight
    from fcmae.engine.metrics import read_metrics
    from fcmae.pretrain import pretrain_from_spec, specs_from_config

    root = tmp_path / "images"
    _write_images(root, 4)
    (root / "img2.png").write_bytes(b"GIF89a broken")
    spec = preflight(
        "pretrain",
        [
            "debug=default",
            "data=imagefolder",
            f"data.root={root}",
            "data.samples_per_epoch=4",
            "trainer.recon_images=0",
            "trainer.num_threads=1",
        ],  # fmt: skip
        specs_from_config,
    )
    result = pretrain_from_spec(spec, tmp_path / "run")
    assert result.step == 2
    # 2 steps x batch 2 = one permutation of the 4 files: the broken one is met once
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]["data/skipped_images"] == 1
