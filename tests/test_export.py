"""Export to dense ConvNeXt V2 (ours, timm, HF): strict loads, numerical proof, round trips."""

from __future__ import annotations

import argparse

import pytest
import torch
from safetensors import safe_open

from fcmae import MODEL_SIZES, create_convnextv2, create_fcmae, dense_to_sparse, sparse_to_dense
from fcmae.cli.export import main as export_main
from fcmae.export import (
    FORMATS,
    build_target,
    export_checkpoint,
    export_state_dict,
    load_into,
    load_weights,
    target_shapes,
    to_canonical,
    verify,
)
from tests.conftest import randomize_

TOL = 1e-4


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these tests share 2 cores with other jobs, and oversubscribed
    OpenMP threads slow small convolutions down several times."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _sparse_fcmae(size: str = "atto"):
    return randomize_(create_fcmae(size, "sparse"))


def _pretrain_ckpt(model) -> dict:
    return {"model": model.state_dict(), "config": {"model": {"size": "atto"}}, "step": 7}


# -- strict loads, every size, nothing allocated ---------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("size", list(MODEL_SIZES))
def test_every_size_loads_strictly_on_meta(size, fmt):
    with torch.device("meta"):
        dense = create_fcmae(size, "dense").state_dict()  # dense FCMAE twin, no memory
    sparse = dense_to_sparse(dense)  # the layout fcmae-pretrain writes
    enc = to_canonical(sparse)
    assert (enc.size, enc.in_chans, enc.layout) == (size, 3, "fcmae (sparse)")
    out = export_state_dict(enc, fmt)
    target = build_target(fmt, size, device="meta")
    expected = {k: tuple(v.shape) for k, v in target.state_dict().items()}
    head = {"timm": ("head.",), "dense": ("head.", "norm."), "hf": ()}[fmt]
    expected = {k: s for k, s in expected.items() if not k.startswith(head)}
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    load_into(target, out, fmt)  # strict except head
    if fmt == "timm" and MODEL_SIZES[size].dims[0] <= 80:  # atto..nano: 1x1 conv MLP in timm
        c = MODEL_SIZES[size].dims[0]
        assert out["stages.0.blocks.0.mlp.fc1.weight"].shape == (4 * c, c, 1, 1)
        assert out["stages.0.blocks.0.mlp.grn.weight"].shape == (4 * c,)


def test_load_into_rejects_a_missing_key():
    out = export_state_dict(to_canonical(create_fcmae("atto", "sparse").state_dict()), "timm")
    out.pop("stages.2.blocks.3.mlp.grn.bias")
    with pytest.raises(ValueError, match="stages.2.blocks.3.mlp.grn.bias"):
        load_into(build_target("timm", "atto", device="meta"), out, "timm")


# -- numerical agreement with every parameter randomised -------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("size", ["atto", "nano", "tiny"])
def test_export_matches_sparse_encoder(size, fmt):
    enc = to_canonical(_sparse_fcmae(size).state_dict())
    impl = "minkowski" if size == "atto" else "canvas"  # MinkowskiEngine's own op once
    checks = verify(export_state_dict(enc, fmt), enc, fmt, depthwise_impl=impl, image_size=64)
    assert len(checks) == (2 if fmt == "dense" else 1)
    for c in checks:
        assert c.ok and c.error < TOL, f"{size} {c.name}: max rel error {c.error:.3e}"


def test_verify_fails_on_a_wrong_kernel_orientation():
    enc = to_canonical(_sparse_fcmae().state_dict())
    out = export_state_dict(enc, "timm")
    key = "stages.1.blocks.0.conv_dw.weight"
    out[key] = out[key].transpose(-1, -2).contiguous()  # dy <-> dx: the classic layout bug
    (check,) = verify(out, enc, "timm", depthwise_impl="canvas")
    assert not check.ok and check.error > 1e-3, check.error


def test_features_of_a_reference_dense_classifier_survive_export():
    ref = randomize_(create_convnextv2("atto", num_classes=10)).eval()
    enc = to_canonical({"model": ref.state_dict()}["model"])
    assert enc.layout == "dense classifier"
    assert sorted(enc.dropped) == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    timm_model = build_target("timm", "atto").eval()
    load_into(timm_model, export_state_dict(enc, "timm"), "timm")
    imgs = torch.randn(2, 3, 64, 64)  # (B, C, H, W)
    with torch.no_grad():
        want = ref.forward_features(imgs).permute(0, 3, 1, 2)  # (B, C3, h, w)
        got = timm_model.forward_features(imgs)
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert err < TOL, err


# -- round trips and idempotence -------------------------------------------------------------


def test_round_trip_sparse_dense_sparse_is_exact():
    sd = _sparse_fcmae().state_dict()
    dense = sparse_to_dense(sd)
    back = dense_to_sparse(dense)
    assert back.keys() == sd.keys()
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    again = sparse_to_dense(dense)  # converting an already-dense dict is a no-op
    assert all(torch.equal(again[k], dense[k]) for k in dense)


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_is_idempotent_and_reversible(fmt):
    sd = _sparse_fcmae().state_dict()
    enc = to_canonical(sd)
    out = export_state_dict(enc, fmt)
    enc2 = to_canonical(out)  # an exported file is itself a valid input
    assert enc2.layout == {"dense": "dense encoder", "timm": "timm", "hf": "hf"}[fmt]
    out2 = export_state_dict(enc2, fmt)
    assert out2.keys() == out.keys()
    assert all(torch.equal(out2[k], out[k]) for k in out)
    sparse_again = dense_to_sparse(enc2.state_dict, prefix="")
    for k, v in sparse_again.items():
        assert torch.equal(v, sd["encoder." + k]), k


# -- the reference implementation's layouts --------------------------------------------------


def _reference_me_checkpoint(model) -> dict:
    """A released-style FCMAE checkpoint: {"model": ME layout}, plus an argparse args."""
    return {"model": model.state_dict(), "args": argparse.Namespace(model="convnextv2_atto")}


def test_reference_minkowski_layout_imports(tmp_path):
    model = _sparse_fcmae()
    sd = model.state_dict()
    # the reference's MinkowskiEngine key names and shapes (REFERENCE.md section 4)
    assert sd["encoder.downsample_layers.1.1.kernel"].shape == (4, 40, 80)
    assert sd["encoder.downsample_layers.1.1.bias"].shape == (1, 80)
    assert sd["encoder.stages.0.0.dwconv.kernel"].shape == (49, 40)
    assert sd["encoder.stages.0.0.grn.gamma"].shape == (1, 160)
    assert (
        "encoder.stages.0.0.norm.ln.weight" in sd
        and "encoder.stages.0.0.pwconv1.linear.bias" in sd
    )
    path = tmp_path / "convnextv2_atto_1k_224_fcmae.pt"
    torch.save(_reference_me_checkpoint(model), path)
    enc = to_canonical(load_weights(path))
    assert (enc.size, enc.layout) == ("atto", "fcmae (sparse)")
    assert {"mask_token", "proj.weight", "pred.bias"} <= set(enc.dropped)
    w = enc.state_dict["downsample_layers.1.1.weight"]  # (C_out, C_in, 2, 2)
    k = sd["encoder.downsample_layers.1.1.kernel"]  # (4, C_in, C_out), dy fastest
    assert torch.equal(w[:, :, 1, 0], k[1].T) and torch.equal(w[:, :, 0, 1], k[2].T)


@pytest.mark.parametrize(
    "layout",
    ["ddp-wrapped sparse", "dense fcmae", "bare sparse encoder", "hf classifier", "timm full"],
)
def test_other_layouts_import(layout):
    model = _sparse_fcmae()
    sd = model.state_dict()
    want = to_canonical(sd).state_dict
    if layout == "ddp-wrapped sparse":
        sd = {"module." + k: v for k, v in sd.items()}
    elif layout == "dense fcmae":
        sd = sparse_to_dense(sd)
    elif layout == "bare sparse encoder":
        sd = model.encoder.state_dict()
    elif layout == "hf classifier":
        hf = export_state_dict(to_canonical(sd), "hf")
        sd = {"convnextv2." + k: v for k, v in hf.items()}
        sd |= {"classifier.weight": torch.zeros(10, 320), "classifier.bias": torch.zeros(10)}
    else:
        sd = export_state_dict(to_canonical(sd), "timm")
        sd |= {"head.norm.weight": torch.ones(320), "head.fc.weight": torch.zeros(5, 320)}
    got = to_canonical(sd).state_dict
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


# -- clear errors ----------------------------------------------------------------------------


def test_unknown_layout_lists_the_keys():
    with pytest.raises(ValueError, match=r"could not place 2 key\(s\): .*blocks\.0\.attn\.qkv"):
        to_canonical({"blocks.0.attn.qkv.weight": torch.zeros(3), "cls_token": torch.zeros(1)})


def test_stray_key_in_a_known_layout_is_named():
    sd = create_fcmae("atto", "sparse").state_dict()
    sd["encoder.stages.0.0.adapter.weight"] = torch.zeros(4)
    sd["lm_head.weight"] = torch.zeros(4)
    with pytest.raises(ValueError, match="adapter.weight.*|lm_head.weight") as info:
        to_canonical(sd)
    assert "encoder.stages.0.0.adapter.weight" in str(info.value)
    assert "lm_head.weight" in str(info.value)


def test_missing_and_misshaped_tensors_are_named():
    sd = create_fcmae("atto", "sparse").state_dict()
    del sd["encoder.stages.3.1.grn.beta"]
    with pytest.raises(ValueError, match=r"missing: stages\.3\.1\.grn\.beta"):
        to_canonical(sd)
    sd = create_fcmae("atto", "sparse").state_dict()
    sd["encoder.stages.0.0.pwconv1.linear.weight"] = torch.zeros(160, 41)
    with pytest.raises(ValueError, match=r"wrong shape: stages\.0\.0\.pwconv1\.weight"):
        to_canonical(sd)


def test_unregistered_size_is_an_error():
    with torch.device("meta"):
        from fcmae.convnextv2 import ConvNeXtV2Encoder

        sd = ConvNeXtV2Encoder((1, 1, 1, 1), (8, 16, 32, 64)).state_dict()
    with pytest.raises(ValueError, match=r"match no registered size"):
        to_canonical(sd)


# -- the job and the CLI ---------------------------------------------------------------------


def test_cli_exports_verifies_and_keeps_existing_files(tmp_path, capsys):
    ckpt = tmp_path / "checkpoint.pt"
    torch.save(_pretrain_ckpt(_sparse_fcmae()), ckpt)
    out = tmp_path / "atto_timm.safetensors"
    export_main([str(ckpt), "--format", "timm", "--output", str(out), "--verify"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"wrote {out} (timm, atto") and "verify max rel error" in line
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["fcmae_size"] == "atto"
    model = build_target("timm", "atto")
    load_into(model, load_weights(out), "timm")

    before = out.read_bytes()
    with pytest.raises(SystemExit) as info:  # existing output: argparse error, exit status 2
        export_main([str(ckpt), "--format", "timm", "--output", str(out)])
    assert info.value.code == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == before

    export_main([str(ckpt), "--format", "dense", "--output", str(out), "--force"])
    assert set(load_weights(out)) == set(target_shapes("dense", "atto"))


def test_cli_failed_verification_writes_nothing(tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    torch.save(_pretrain_ckpt(_sparse_fcmae()), ckpt)
    out = tmp_path / "atto.pt"
    argv = [str(ckpt), "--format", "hf", "-o", str(out), "--verify", "--tolerance", "1e-30"]
    with pytest.raises(SystemExit, match="verification FAILED") as info:
        export_main(argv + ["--depthwise-impl", "canvas"])
    assert info.value.code != 0
    assert list(tmp_path.iterdir()) == [ckpt]  # no output, no temporary file


def test_cli_rejects_bad_input_before_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        export_main([str(tmp_path / "nope.pt"), "--format", "timm", "-o", str(tmp_path / "x")])
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    torch.save({"model": {"foo.weight": torch.zeros(2)}}, bad)
    with pytest.raises(SystemExit, match="could not place 1 key"):
        export_main([str(bad), "--format", "timm", "-o", str(tmp_path / "out.pt")])
    assert not (tmp_path / "out.pt").exists()


class _Custom:  # a pickled object that is not plain data
    pass


def test_unsafe_or_broken_files_are_refused(tmp_path):
    bad = tmp_path / "pickled.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "obj": _Custom()}, bad)
    with pytest.raises(ValueError, match="not plain data .*_Custom"):
        load_weights(bad)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_weights(broken)


def test_export_checkpoint_torch_output(tmp_path):
    ckpt = tmp_path / "encoder.pt"
    torch.save(create_fcmae("atto", "dense").state_dict(), ckpt)  # a dense FCMAE state dict
    res = export_checkpoint(ckpt, tmp_path / "w.pth", "dense", do_verify=True, image_size=32)
    assert res.ok and res.layout == "fcmae (dense)" and len(res.checks) == 2
    sd = torch.load(tmp_path / "w.pth", weights_only=True)
    load_into(create_convnextv2("atto", num_classes=3), sd, "dense")
