"""Whole FCMAE: the sparse engine and the dense twin (converted weights) agree exactly."""

from __future__ import annotations

import pytest
import torch

from fcmae import (
    MODEL_SIZES,
    create_convnextv2,
    create_fcmae,
    dense_to_sparse,
    get_size,
    sparse_to_dense,
)
from tests.conftest import assert_close, max_rel_err, patch_mask, randomize_

# fp32; errors are relative to the largest magnitude of the compared tensor.
FWD_TOL = 1e-4
GRAD_TOL = 1e-3


def _mask(case: str, b: int, grid: tuple[int, int]) -> torch.Tensor:
    n = grid[0] * grid[1]
    if case == "single_patch":
        return patch_mask(b, grid, keep=1)
    mask = patch_mask(b, grid, keep=max(1, int(n * 0.4)))
    if case == "last_row_col":  # hidden in every sample
        mask[:, -1, :] = 1.0
        mask[:, :, -1] = 1.0
    return mask


# name: (batch, in_chans, height, width, patch_size, drop_path_rate)
CASES = {
    "batch1": (1, 3, 224, 224, 32, 0.0),
    "batch3": (3, 3, 224, 224, 32, 0.0),
    "last_row_col": (3, 3, 224, 224, 32, 0.0),
    "single_patch": (2, 3, 224, 224, 32, 0.0),
    "rect_224x288": (2, 3, 224, 288, 32, 0.0),
    "in_chans1": (2, 1, 96, 128, 32, 0.0),
    "in_chans4": (2, 4, 128, 96, 32, 0.0),
    "patch64": (2, 3, 192, 256, 64, 0.0),
    "drop_path": (4, 3, 128, 128, 32, 0.3),
}


def _pair(size: str, in_chans: int, patch_size: int, drop_path_rate: float):
    sparse = create_fcmae(
        size, "sparse", in_chans=in_chans, patch_size=patch_size, drop_path_rate=drop_path_rate
    )
    randomize_(sparse)
    dense = create_fcmae(
        size, "dense", in_chans=in_chans, patch_size=patch_size, drop_path_rate=drop_path_rate
    )
    dense.load_state_dict(sparse_to_dense(sparse.state_dict()))
    return sparse, dense


def _run(model, imgs, mask, seed):
    torch.manual_seed(seed)  # same drop-path draws in both engines
    model.zero_grad()
    loss, pred, out_mask = model(imgs, mask)
    loss.backward()
    feats = model.encoder(imgs, mask).detach()
    grads = {k: p.grad for k, p in model.named_parameters()}
    return loss.detach(), pred.detach(), out_mask, feats, grads


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("size", ["atto", "tiny"])
def test_sparse_matches_dense(size, case):
    b, c, h, w, p, dpr = CASES[case]
    sparse, dense = _pair(size, c, p, dpr)
    imgs = torch.randn(b, c, h, w)
    mask = _mask(case, b, (h // p, w // p))
    if dpr:
        sparse.train(), dense.train()
        torch.manual_seed(5)
    ls, ps, ms, fs, gs = _run(sparse, imgs, mask, seed=11)
    ld, pd, md, fd, gd = _run(dense, imgs, mask, seed=11)
    assert torch.equal(ms, md)
    assert_close(ls, ld, FWD_TOL, "loss")
    assert_close(ps, pd, FWD_TOL, "pred")
    assert_close(fs, fd, FWD_TOL, "encoder output")
    assert fs.shape == (b, get_size(size).dims[-1], h // 32, w // 32)
    hidden = mask.repeat_interleave(p // 32, 1).repeat_interleave(p // 32, 2) > 0.5
    assert fs.permute(0, 2, 3, 1)[hidden].abs().max() == 0, "masked cells must be zero"
    # Gradients: convert the sparse engine's gradients like weights and compare per tensor.
    gs_dense = sparse_to_dense(gs)
    assert gs_dense.keys() == gd.keys()
    worst = max(((max_rel_err(gs_dense[k], gd[k]), k) for k in gd), key=lambda t: t[0])
    assert worst[0] <= GRAD_TOL, f"gradient of {worst[1]}: max relative error {worst[0]:.3e}"
    grn = [k for k in gd if k.endswith("grn.gamma")]
    assert all(gd[k].abs().sum() > 0 for k in grn), "GRN must be exercised (non-zero grads)"


def test_random_mask_keeps_the_paper_ratio():
    model = create_fcmae("atto", "dense")
    _, _, mask = model(torch.randn(3, 3, 224, 224))
    assert mask.shape == (3, 49)
    assert torch.equal(mask.sum(1), torch.full((3,), 49.0 - 19.0))


def test_sparse_engine_runs_minkowski_sparse_tensors(monkeypatch):
    from sparse_ops.minkowski import import_minkowski
    from sparse_ops.nn import SparseBlock

    ME = import_minkowski()
    model = create_fcmae("atto", "sparse")
    seen = []
    for m in model.modules():
        if isinstance(m, SparseBlock):
            m.register_forward_hook(lambda mod, args, out: seen.append((args[0], out)))
    imgs = torch.randn(2, 3, 64, 64)
    mask = torch.tensor([[[0.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]]])
    model.encoder(imgs, mask)
    assert len(seen) == sum(get_size("atto").depths)
    assert all(isinstance(a, ME.SparseTensor) and isinstance(o, ME.SparseTensor) for a, o in seen)
    first = seen[0][0]
    # 3 visible patches of 8x8 stem sites; coordinates (b, y, x)
    assert first.F.shape == (3 * 64, 40) and first.C.shape == (3 * 64, 3)
    assert set(first.C[:, 0].tolist()) == {0, 1}


@pytest.mark.parametrize("size", list(MODEL_SIZES))
def test_parameter_counts_match_the_paper(size):
    with torch.device("meta"):
        model = create_convnextv2(size)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    expected = MODEL_SIZES[size].params_m
    assert abs(count / expected - 1) < 0.01, f"{size}: {count:.2f}M vs paper {expected}M"


def test_classifier_is_the_unmasked_encoder():
    clf = randomize_(create_convnextv2("atto", num_classes=7))
    enc = create_fcmae("atto", "dense").encoder
    enc.load_state_dict(
        {k: v for k, v in clf.state_dict().items() if k.startswith(("down", "st"))}
    )
    imgs = torch.randn(2, 3, 64, 96)
    assert clf(imgs).shape == (2, 7)
    assert_close(clf.forward_features(imgs).permute(0, 3, 1, 2), enc(imgs), 1e-6, "features")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: create_fcmae("gigantic"), "unknown model size 'gigantic'"),
        (lambda: create_fcmae("atto", engine="jax"), "unknown engine 'jax'"),
        (lambda: create_fcmae("atto", mask_ratio=1.0), r"mask_ratio must be in \[0, 1\)"),
        (lambda: create_fcmae("atto", mask_ratio=-0.1), r"mask_ratio must be in \[0, 1\)"),
        (lambda: create_fcmae("atto", patch_size=48), "patch_size must be a positive multiple"),
        (lambda: create_fcmae("atto", depthwise_impl="fft"), "unknown depthwise_impl 'fft'"),
        (lambda: create_fcmae("atto", in_chans=0), "in_chans must be >= 1"),
        (lambda: create_convnextv2("gigantic"), "unknown model size"),
    ],
)
def test_bad_construction_is_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("engine", ["sparse", "dense"])
@pytest.mark.parametrize(
    ("imgs", "mask", "match"),
    [
        (torch.randn(2, 3, 100, 96), None, "not divisible by the patch size 32"),
        (torch.randn(2, 4, 64, 64), None, "expected 3 input channels"),
        (torch.randn(3, 64, 64), None, r"images must be \(B, C, H, W\)"),
        (torch.randn(2, 3, 64, 64), torch.zeros(2, 3, 3), "mask must be"),
        (torch.randn(2, 3, 64, 64), torch.zeros(2, 5), "mask must be"),
    ],
)
def test_bad_input_is_a_clear_error(engine, imgs, mask, match):
    model = create_fcmae("atto", engine)
    with pytest.raises(ValueError, match=match):
        model(imgs, mask)


def test_flat_and_grid_masks_are_the_same():
    model = create_fcmae("atto", "dense")
    imgs = torch.randn(2, 3, 64, 96)
    mask = patch_mask(2, (2, 3), keep=2)
    assert torch.equal(model(imgs, mask)[0], model(imgs, mask.flatten(1))[0])


def test_converter_is_strict_idempotent_and_round_trips():
    sparse = randomize_(create_fcmae("atto", "sparse")).state_dict()
    dense = sparse_to_dense(sparse)
    assert dense.keys() == create_fcmae("atto", "dense").state_dict().keys()
    for k, v in dense_to_sparse(dense).items():
        assert torch.equal(v, sparse[k]), k
    for k, v in sparse_to_dense(dense).items():  # already dense: unchanged
        assert torch.equal(v, dense[k]), k
    for k, v in dense_to_sparse(sparse).items():  # already sparse: unchanged
        assert torch.equal(v, sparse[k]), k
    with pytest.raises(ValueError, match="encoder.stages.0.0.mystery"):
        sparse_to_dense({**sparse, "encoder.stages.0.0.mystery.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="does not fit its name"):
        sparse_to_dense({"encoder.stages.0.0.dwconv.kernel": torch.zeros(4, 1, 7, 7)})
