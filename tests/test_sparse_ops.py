"""Every sparse op against its masked-dense twin, forward and backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fcmae.layers import GRN, Block, Downsample, DropPath, LayerNorm
from fcmae.masking import upsample_mask
from sparse_ops.layout import conv_kernel_to_weight, depthwise_kernel_to_weight
from sparse_ops.minkowski import import_minkowski
from sparse_ops.nn import (
    SparseBlock,
    SparseDepthwiseConv,
    SparseDownsample,
    SparseDropPath,
    SparseGRN,
    SparseLayerNorm,
    with_features,
)
from sparse_ops.tensor import Canvas, to_dense, to_sparse
from tests.conftest import assert_close, patch_mask, randomize_

ME = import_minkowski()
TOL = 1e-5


def _visible(kind: str, b: int, h: int, w: int) -> torch.Tensor:
    """Visibility ``(B, H, W)`` bool of a named pattern (4x4-site patches)."""
    grid = (h // 4, w // 4)
    if kind == "random":
        mask = patch_mask(b, grid, keep=max(1, grid[0] * grid[1] * 2 // 5))
    elif kind == "last_row_col":  # hidden in every sample
        mask = patch_mask(b, grid, keep=grid[0] * grid[1] // 2)
        mask[:, -1, :] = 1.0
        mask[:, :, -1] = 1.0
    elif kind == "single":
        mask = patch_mask(b, grid, keep=1)
    else:  # all visible
        mask = torch.zeros(b, *grid)
    return upsample_mask(mask, 4) < 0.5


MASKS = ["random", "last_row_col", "single", "full"]
CHANNELS = [3, 16]


def _inputs(c: int, kind: str, b: int = 2, h: int = 16, w: int = 24):
    """Dense input (zeros at hidden sites), visibility, sparse tensor and canvas."""
    vis = _visible(kind, b, h, w)
    x = torch.randn(b, c, h, w) * vis.unsqueeze(1)
    st = to_sparse(x, vis)
    return x, vis, st, Canvas.of(st, (b, h, w))


def _check_fwd_bwd(sparse_fn, dense_fn, c, kind, what):
    """Run both on the same inputs; compare outputs at visible sites and input gradients."""
    x, vis, st, canvas = _inputs(c, kind)
    feats = st.F.detach().clone().requires_grad_(True)
    st = with_features(st, feats)
    xd = x.clone().requires_grad_(True)
    out_s = sparse_fn(st, canvas)
    out_d = dense_fn(xd, vis)  # (B, C', H, W)
    b, h, w = vis.shape
    dense_s = to_dense(out_s, (b, out_s.F.shape[1], h, w))
    vis4 = vis.unsqueeze(1)
    assert_close(dense_s * vis4, out_d * vis4, TOL, f"{what} forward")
    probe = torch.randn_like(out_d) * vis4
    (dense_s * probe).sum().backward()
    (out_d * probe).sum().backward()
    grad_d = xd.grad.permute(0, 2, 3, 1)[vis]  # (N, C) in row-major site order
    grad_s = to_dense(with_features(st, feats.grad), (b, c, h, w)).permute(0, 2, 3, 1)[vis]
    assert_close(grad_s, grad_d, TOL, f"{what} backward")


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("c", CHANNELS)
@pytest.mark.parametrize("impl", ["canvas", "minkowski"])
def test_depthwise_conv(impl, c, kind):
    conv = randomize_(SparseDepthwiseConv(c, 7, impl), 1.0)
    weight = depthwise_kernel_to_weight(conv.kernel.detach())
    bias = conv.bias.detach().view(-1)

    def dense(x, vis):
        return F.conv2d(x, weight, bias, padding=3, groups=c)

    _check_fwd_bwd(conv, dense, c, kind, f"depthwise[{impl}]")


def test_depthwise_impls_agree_on_parameter_gradients():
    x, vis, st, canvas = _inputs(8, "random")
    grads = []
    for impl in ("canvas", "minkowski"):
        torch.manual_seed(1)
        conv = randomize_(SparseDepthwiseConv(8, 7, impl), 1.0)
        conv(st, canvas).F.square().sum().backward()
        grads.append((conv.kernel.grad, conv.bias.grad))
    assert_close(grads[0][0], grads[1][0], TOL, "kernel grad")
    assert_close(grads[0][1], grads[1][1], TOL, "bias grad")


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("c", CHANNELS)
def test_pointwise_ops(c, kind):
    ln = randomize_(SparseLayerNorm(c), 0.5)
    lin = randomize_(ME.MinkowskiLinear(c, 2 * c), 0.5)
    act = ME.MinkowskiGELU()
    dense_ln = LayerNorm(c)
    dense_ln.load_state_dict(ln.ln.state_dict())

    def sparse(st, canvas):
        return act(lin(ln(st)))

    def dense(x, vis):
        y = F.gelu(lin.linear(dense_ln(x.permute(0, 2, 3, 1))))
        return y.permute(0, 3, 1, 2)

    _check_fwd_bwd(sparse, dense, c, kind, "layernorm+linear+gelu")


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("c", CHANNELS)
def test_grn_per_sample(c, kind):
    grn = randomize_(SparseGRN(c), 1.0)
    dense_grn = GRN(c)
    dense_grn.gamma.data = grn.gamma.detach().view(1, 1, 1, -1).clone()
    dense_grn.beta.data = grn.beta.detach().view(1, 1, 1, -1).clone()

    def dense(x, vis):
        return dense_grn(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    _check_fwd_bwd(grn, dense, c, kind, "GRN")


def test_grn_does_not_mix_samples():
    """Scaling sample 1 must leave sample 0's output unchanged (the reference mixed them)."""
    grn = randomize_(SparseGRN(6), 1.0)
    x, vis, st, canvas = _inputs(6, "random")
    out = to_dense(grn(st, canvas), (2, 6, *vis.shape[1:]))
    x2 = x.clone()
    x2[1] *= 7.0
    st2 = to_sparse(x2, vis)
    out2 = to_dense(grn(st2, Canvas.of(st2, vis.shape)), (2, 6, *vis.shape[1:]))
    assert_close(out2[0], out[0], 1e-6, "sample 0")
    assert (out2[1] - out[1]).abs().max() > 1e-3


def test_drop_path_draws_like_dense():
    x, vis, st, canvas = _inputs(4, "random", b=6)
    sparse, dense = SparseDropPath(0.5).train(), DropPath(0.5).train()
    torch.manual_seed(3)
    out_s = to_dense(sparse(st, canvas), tuple(x.shape))
    torch.manual_seed(3)
    out_d = dense(x)
    assert_close(out_s, out_d, 1e-6, "drop path")
    kept = out_d.flatten(1).abs().sum(1) > 0
    assert 0 < kept.sum() < 6, "with p=0.5 over 6 samples some must drop and some stay"
    assert sparse.eval()(st, canvas) is st


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("c", CHANNELS)
@pytest.mark.parametrize("impl", ["gather", "minkowski"])
def test_downsample(impl, c, kind):
    down = randomize_(SparseDownsample(c, 2 * c, impl), 0.5)
    dense_down = Downsample(c, 2 * c)
    dense_down[0].load_state_dict(down[0].ln.state_dict())
    dense_down[1].weight.data = conv_kernel_to_weight(down[1].kernel.detach())
    dense_down[1].bias.data = down[1].bias.detach().view(-1)
    x, vis, st, canvas = _inputs(c, kind)
    b, h, w = vis.shape
    out = down(st, canvas)
    assert out.tensor_stride == [2, 2]
    vis_out = vis[:, ::2, ::2].unsqueeze(1)  # 4x4-site patches: 2x2 windows are all-or-none
    ref = dense_down(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) * vis_out
    got = to_dense(out, (b, 2 * c, h // 2, w // 2))
    assert_close(got, ref, TOL, "downsample")
    assert len(out.F) == int(vis_out.sum()), "downsampling must keep the visible pattern"
    out.F.square().sum().backward()
    assert down[1].kernel.grad.abs().sum() > 0


def test_downsample_impls_agree_on_gradients():
    x, vis, st, canvas = _inputs(6, "random")
    grads = []
    for impl in ("gather", "minkowski"):
        torch.manual_seed(2)
        down = randomize_(SparseDownsample(6, 12, impl), 0.5)
        feats = st.F.detach().clone().requires_grad_(True)
        out = down(with_features(st, feats), canvas)
        order = out.C[:, 0] * 10**6 + out.C[:, 1] * 10**3 + out.C[:, 2]
        (out.F[order.argsort()] * torch.arange(12.0)).sum().backward()
        grads.append((down[1].kernel.grad, down[1].bias.grad, feats.grad))
    for name, a, b in zip(("kernel", "bias", "input"), *grads, strict=True):
        assert_close(a, b, TOL, f"downsample {name} grad")


def test_gather_downsample_rejects_unaligned_masks():
    vis = torch.ones(1, 4, 4, dtype=torch.bool)
    vis[0, 0, 0] = False  # the top-left 2x2 window has a missing child
    st = to_sparse(torch.randn(1, 3, 4, 4), vis)
    with pytest.raises(ValueError, match="not aligned"):
        SparseDownsample(3, 6, "gather")(st, Canvas.of(st, (1, 4, 4)))


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("impl", ["canvas", "minkowski"])
def test_block(impl, kind):
    from fcmae.convert import sparse_to_dense

    c = 8
    block = randomize_(SparseBlock(c, 0.0, impl), 0.2)
    dense_block = Block(c)
    sd = {f"stages.0.0.{k}": v for k, v in block.state_dict().items()}
    dense_block.load_state_dict(
        {k.removeprefix("stages.0.0."): v for k, v in sparse_to_dense(sd, prefix="").items()}
    )

    def dense(x, vis):
        return dense_block(x.permute(0, 2, 3, 1), vis.unsqueeze(-1).float()).permute(0, 3, 1, 2)

    _check_fwd_bwd(block, dense, c, kind, f"block[{impl}]")


def test_sites_come_from_the_mask_not_the_features():
    """A visible site whose features are all zero must still exist (reference bug)."""
    x = torch.randn(2, 3, 4, 4)
    vis = torch.ones(2, 4, 4, dtype=torch.bool)
    vis[1, 0, 0] = False
    x[0, :, 1, 1] = 0.0
    st = to_sparse(x, vis)
    assert len(st.F) == 31
    assert torch.equal(to_dense(st, (2, 3, 4, 4)), x * vis.unsqueeze(1))


def test_to_dense_keeps_an_explicit_shape():
    """Last row and column empty in every sample: the output must not shrink."""
    x = torch.randn(3, 2, 5, 6)
    vis = torch.ones(3, 5, 6, dtype=torch.bool)
    vis[:, -1, :] = False
    vis[:, :, -1] = False
    out = to_dense(to_sparse(x, vis), (3, 2, 5, 6))
    assert out.shape == (3, 2, 5, 6)
    assert out[:, :, -1].abs().sum() == 0 and out[:, :, :, -1].abs().sum() == 0
    with pytest.raises(ValueError, match="outside"):
        to_dense(to_sparse(x, vis), (3, 2, 2, 2))


def test_fused_gelu_grn_gradients():
    """The hand-written backward of the fused GELU+GRN against finite differences (float64)."""
    from sparse_ops.functional import gelu_grn, grn

    n, c, b = 40, 5, 3
    h = torch.randn(n, c, dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(1, c, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(1, c, dtype=torch.float64, requires_grad=True)
    batch = torch.arange(n) % b
    samples = (torch.arange(b)[:, None] == batch[None]).double()  # (B, N) one-hot
    h.data[batch == 1, 2] = 0.0  # an all-zero channel in one sample: norm 0, gradient finite
    assert torch.autograd.gradcheck(lambda *a: gelu_grn(*a, batch, samples), (h, gamma, beta))
    ref = grn(F.gelu(h), gamma, beta, batch, samples)
    assert_close(gelu_grn(h, gamma, beta, batch, samples), ref, 1e-12, "fused vs unfused")


def test_unique_rows_gradient():
    from sparse_ops.functional import unique_rows

    src = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([4, 0, 6, 2])
    assert torch.autograd.gradcheck(lambda s: unique_rows(s, index), (src,))
