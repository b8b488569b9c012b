"""Export pretrained ConvNeXt V2 encoder weights to dense ConvNeXt V2 models, and prove it.

Every input goes through one *canonical* layout, the reference implementation's dense encoder
without prefix and without head (``downsample_layers.i.k``, ``stages.i.j.{dwconv,norm,
pwconv1,grn.gamma,grn.beta,pwconv2}``, GRN ``(1, 1, 1, D)``; exactly the keys of
:func:`fcmae.create_convnextv2` minus ``norm``/``head``).

Inputs (recognised from key names and tensor shapes; see :func:`to_canonical`):

* an ``fcmae-pretrain`` checkpoint ``{"model": ..., "config": ..., "step": ...}``;
* an FCMAE state dict of either engine (``encoder.`` prefix; decoder keys are dropped), which
  includes the reference implementation's MinkowskiEngine layout (``.kernel``, ``.ln.``,
  ``.linear.``, GRN ``(1, D)``); released checkpoints wrap it in ``{"model": ...}``;
* a bare encoder of either engine, or the reference dense classifier (``norm``/``head`` dropped);
* an already exported ``timm`` or Hugging Face file (so exporting is idempotent).

Targets (:data:`FORMATS`): ``dense`` (:func:`fcmae.create_convnextv2`, head excluded),
``timm`` (``timm.create_model("convnextv2_<size>")``, all but ``head.*``; atto..nano hold the
MLP as 1x1 convolutions ``(4C, C, 1, 1)``, GRN as ``(4C,)``) and ``hf`` (transformers'
``ConvNextV2Model``, strict). Target shapes are read from the target models built on the meta
device, so no layout is guessed and nothing large is allocated.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from fcmae.convert import dense_to_sparse, sparse_to_dense
from fcmae.registry import MODEL_SIZES, get_size

log = logging.getLogger(__name__)

FORMATS = ("dense", "timm", "hf")
# Max |target - sparse| over max |sparse| on the last-stage features, fp32.
VERIFY_TOLERANCE = 1e-4

# Rename rules: (canonical template, target template). Placeholders: i, j stage/block index,
# d downsampling index (1..), k module within a downsampling, p weight|bias.
_PLACEHOLDERS = {"i": r"\d+", "j": r"\d+", "d": r"[1-9]\d*", "k": r"[01]", "p": r"weight|bias"}
_RULES: dict[str, list[tuple[str, str]]] = {
    "dense": [("{rest}", "{rest}")],
    "timm": [
        ("downsample_layers.0.{k}.{p}", "stem.{k}.{p}"),
        ("downsample_layers.{d}.{k}.{p}", "stages.{d}.downsample.{k}.{p}"),
        ("stages.{i}.{j}.dwconv.{p}", "stages.{i}.blocks.{j}.conv_dw.{p}"),
        ("stages.{i}.{j}.norm.{p}", "stages.{i}.blocks.{j}.norm.{p}"),
        ("stages.{i}.{j}.pwconv1.{p}", "stages.{i}.blocks.{j}.mlp.fc1.{p}"),
        ("stages.{i}.{j}.grn.gamma", "stages.{i}.blocks.{j}.mlp.grn.weight"),
        ("stages.{i}.{j}.grn.beta", "stages.{i}.blocks.{j}.mlp.grn.bias"),
        ("stages.{i}.{j}.pwconv2.{p}", "stages.{i}.blocks.{j}.mlp.fc2.{p}"),
    ],
    "hf": [
        ("downsample_layers.0.0.{p}", "embeddings.patch_embeddings.{p}"),
        ("downsample_layers.0.1.{p}", "embeddings.layernorm.{p}"),
        ("downsample_layers.{d}.{k}.{p}", "encoder.stages.{d}.downsampling_layer.{k}.{p}"),
        ("stages.{i}.{j}.dwconv.{p}", "encoder.stages.{i}.layers.{j}.dwconv.{p}"),
        ("stages.{i}.{j}.norm.{p}", "encoder.stages.{i}.layers.{j}.layernorm.{p}"),
        ("stages.{i}.{j}.pwconv1.{p}", "encoder.stages.{i}.layers.{j}.pwconv1.{p}"),
        ("stages.{i}.{j}.grn.gamma", "encoder.stages.{i}.layers.{j}.grn.weight"),
        ("stages.{i}.{j}.grn.beta", "encoder.stages.{i}.layers.{j}.grn.bias"),
        ("stages.{i}.{j}.pwconv2.{p}", "encoder.stages.{i}.layers.{j}.pwconv2.{p}"),
    ],
}
# Keys of each target that are not encoder weights: left out of (or filled in) an export.
_HEAD = {
    "dense": re.compile(r"(norm|head)\..+"),
    "timm": re.compile(r"head\..+"),
    "hf": re.compile(r"layernorm\.(weight|bias)"),
}
# FCMAE keys outside the encoder (decoder of either implementation), dropped on export.
_DECODER = re.compile(r"(proj\.(weight|bias)|mask_token|pred\.(weight|bias)|decoder\.\d+\..+)")


def _compile(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)  # literal, name, literal, ...
    rx = "".join(
        re.escape(s) if n % 2 == 0 else f"(?P<{s}>{_PLACEHOLDERS.get(s, '.+')})"
        for n, s in enumerate(parts)
    )
    return re.compile(rx)


@functools.cache
def _compiled(fmt: str, reverse: bool) -> list[tuple[re.Pattern, str]]:
    return [(_compile(b if reverse else a), a if reverse else b) for a, b in _RULES[fmt]]


def _rename(sd: Mapping[str, Tensor], fmt: str, reverse: bool) -> tuple[dict, list[str]]:
    """Apply ``fmt``'s rules (canonical -> fmt, or back); returns (renamed, unplaced keys)."""
    out: dict[str, Tensor] = {}
    unplaced: list[str] = []
    for key, t in sd.items():
        for rx, template in _compiled(fmt, reverse):
            m = rx.fullmatch(key)
            if m is not None:
                new = template.format(**m.groupdict())
                if new in out:
                    raise ValueError(f"two keys map to {new!r} (the last one: {key!r})")
                out[new] = t
                break
        else:
            unplaced.append(key)
    return out, unplaced


def _fit(t: Tensor, shape: tuple[int, ...]) -> Tensor | None:
    """``t`` reshaped to ``shape`` if they differ only by singleton dims, else None."""
    if tuple(t.shape) == shape:
        return t
    if [s for s in t.shape if s != 1] == [s for s in shape if s != 1]:
        return t.reshape(shape)
    return None


# -- target models ---------------------------------------------------------------------------


def hf_config(size: str, in_chans: int = 3, **kw):
    """transformers ``ConvNextV2Config`` of a registered size (no download)."""
    from transformers import ConvNextV2Config

    spec = get_size(size)
    kw.setdefault("layer_norm_eps", 1e-6)
    return ConvNextV2Config(
        num_channels=in_chans, depths=list(spec.depths), hidden_sizes=list(spec.dims), **kw
    )


def build_target(
    fmt: str, size: str, in_chans: int = 3, num_classes: int = 0, device: str | None = None
) -> nn.Module:
    """The target model of an export format; ``device="meta"`` builds it without memory."""
    check_format(fmt)
    spec = get_size(size)
    with torch.device(device or "cpu"):
        if fmt == "dense":
            from fcmae.convnextv2 import create_convnextv2

            return create_convnextv2(size, num_classes=num_classes, in_chans=in_chans)
        if fmt == "timm":
            import timm

            return timm.create_model(
                spec.timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans
            )
        from transformers import ConvNextV2Model

        return ConvNextV2Model(hf_config(size, in_chans))


@functools.cache
def target_shapes(fmt: str, size: str, in_chans: int = 3) -> dict[str, tuple[int, ...]]:
    """Encoder keys and shapes of a target (head keys excluded), from a meta-device build."""
    sd = build_target(fmt, size, in_chans, device="meta").state_dict()
    return {k: tuple(v.shape) for k, v in sd.items() if not _HEAD[fmt].fullmatch(k)}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    return fmt


# -- reading any input -----------------------------------------------------------------------


def load_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of a checkpoint file: safetensors, or a torch file (unwrapped, see below).

    Torch files load with ``weights_only=True`` (plus the few plain-data globals of
    :func:`_allowed_globals`), so no code in a checkpoint is ever run; the weights are taken
    from ``"model"`` or ``"state_dict"`` when present, else the file must be a bare state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global: " not in str(err):
            raise ValueError(f"{path} is not a readable torch checkpoint") from None
        found = str(err).split("Unsupported global: ")[-1].split(" was not")[0][:120]
        raise ValueError(
            f"{path} holds Python objects that are not plain data ({found}); save its state "
            "dict alone (torch.save(model.state_dict(), file)) and export that"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path} is not a readable torch checkpoint ({err})") from None
    return unwrap(obj, str(path))


def _allowed_globals() -> list:
    """Plain data besides tensors found in checkpoints: the reference's ``args`` namespace,
    numpy arrays and dtypes (the RNG states in fcmae-pretrain/finetune checkpoints)."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(t)) for t in ("uint32", "int32", "int64", "float32", "float64")]
    return [argparse.Namespace, np.ndarray, np.dtype, core.multiarray._reconstruct, *dtypes]


def unwrap(obj, name: str = "checkpoint") -> dict[str, Tensor]:
    """The state dict inside a checkpoint object (``{"model": sd, ...}`` or a bare ``sd``)."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{name} holds no state dict (expected a dict of tensors or 'model')")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{name}: entries that are not tensors: {', '.join(map(str, bad[:10]))}")
    return dict(obj)


@dataclass
class EncoderWeights:
    """Encoder weights in the canonical layout, with what was recognised about them."""

    state_dict: dict[str, Tensor]
    size: str
    in_chans: int
    layout: str  # what the input was, e.g. "fcmae (sparse)", "timm"
    dropped: list[str]  # input keys deliberately left out (decoder, head)


def _strip(sd: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _is_sparse(keys) -> bool:
    return any(k.endswith(".kernel") or ".ln." in k or ".linear." in k for k in keys)


def _detect(sd: dict[str, Tensor]) -> tuple[str, dict[str, Tensor], list[str], list[str]]:
    """-> (layout name, canonical-named tensors, dropped keys, unplaced keys)."""
    if all(k.startswith("module.") for k in sd):  # DistributedDataParallel wrapper
        sd = _strip(sd, "module.")
    keys = set(sd)
    if "embeddings.patch_embeddings.weight" in keys or any(
        k.startswith("convnextv2.") for k in keys
    ):
        if any(k.startswith("convnextv2.") for k in keys):  # ConvNextV2ForImageClassification
            rest = [k for k in keys if not k.startswith("convnextv2.")]
            sd = _strip(sd, "convnextv2.") | {k: sd[k] for k in rest}
        dropped = sorted(k for k in sd if k.startswith("classifier.") or _HEAD["hf"].fullmatch(k))
        named, unplaced = _rename({k: sd[k] for k in sd if k not in dropped}, "hf", reverse=True)
        return "hf", named, dropped, unplaced
    if "stem.0.weight" in keys:
        dropped = sorted(k for k in keys if _HEAD["timm"].fullmatch(k))
        named, unplaced = _rename({k: sd[k] for k in sd if k not in dropped}, "timm", True)
        return "timm", named, dropped, unplaced
    if any(k.startswith("encoder.") for k in keys):
        enc = _strip(sd, "encoder.")
        rest = [k for k in keys if not k.startswith("encoder.")]
        dropped = sorted(k for k in rest if _DECODER.fullmatch(k))
        unplaced = sorted(set(rest) - set(dropped))
        layout = f"fcmae ({'sparse' if _is_sparse(enc) else 'dense'})"
        named, more = _canonical_names(enc, "encoder.")
        return layout, named, dropped, unplaced + more
    if "downsample_layers.0.0.weight" in keys:
        dropped = sorted(k for k in keys if _HEAD["dense"].fullmatch(k))
        enc = {k: sd[k] for k in sd if k not in dropped}
        kind = "sparse encoder" if _is_sparse(enc) else "dense encoder"
        if dropped:
            kind = "dense classifier"
        named, unplaced = _canonical_names(enc, "")
        return kind, named, dropped, unplaced
    return "unknown", {}, [], sorted(keys)


def _canonical_names(enc: dict[str, Tensor], shown_prefix: str) -> tuple[dict, list[str]]:
    """Bare encoder of either engine -> canonical names (key by key, via ``fcmae.convert``).

    Returns (converted, keys it could not place, shown with ``shown_prefix`` and shape).
    """
    named, unplaced = {}, []
    for k, v in enc.items():
        try:
            named.update(sparse_to_dense({k: v}, prefix=""))
        except ValueError:
            unplaced.append(f"{shown_prefix}{k} {tuple(v.shape)}")
    return named, unplaced


def _infer_size(named: dict[str, Tensor]) -> tuple[str, int]:
    stem = named.get("downsample_layers.0.0.weight")
    if stem is None or stem.dim() != 4:
        raise ValueError(
            "cannot recognise the model size: no stem convolution weight "
            "(downsample_layers.0.0.weight / stem.0.weight / embeddings.patch_embeddings.weight)"
        )
    dims = [stem.shape[0]]
    for i in range(1, 4):
        t = named.get(f"downsample_layers.{i}.1.weight")
        dims.append(t.shape[0] if t is not None else -1)
    depths = []
    for i in range(4):
        blocks = {int(m[1]) for k in named if (m := re.match(rf"stages\.{i}\.(\d+)\.", k))}
        depths.append(max(blocks) + 1 if blocks else 0)
    for spec in MODEL_SIZES.values():
        if tuple(spec.dims) == tuple(dims) and tuple(spec.depths) == tuple(depths):
            return spec.name, stem.shape[1]
    known = "; ".join(f"{s.name} {s.depths} {s.dims}" for s in MODEL_SIZES.values())
    raise ValueError(
        f"weights have depths {tuple(depths)} and dims {tuple(dims)}, which match no "
        f"registered size ({known})"
    )


def to_canonical(sd: Mapping[str, Tensor]) -> EncoderWeights:
    """Any supported layout -> canonical encoder weights; strict.

    A ValueError names the keys it could not place, the keys missing for the recognised size,
    or the tensors whose shapes do not fit.
    """
    layout, named, dropped, unplaced = _detect(dict(sd))
    if unplaced:
        raise ValueError(
            f"unknown layout ({layout}): could not place {len(unplaced)} key(s): "
            + ", ".join(unplaced[:12])
            + (" ..." if len(unplaced) > 12 else "")
        )
    size, in_chans = _infer_size(named)
    out = _conform(named, target_shapes("dense", size, in_chans), f"{layout} -> canonical")
    return EncoderWeights(out, size, in_chans, layout, dropped)


def _conform(sd: dict[str, Tensor], shapes: dict[str, tuple], what: str) -> dict[str, Tensor]:
    """Reshape ``sd`` onto exactly ``shapes``' keys; ValueError on anything else."""
    missing = [k for k in shapes if k not in sd]
    extra = [k for k in sd if k not in shapes]
    out, wrong = {}, []
    for k, shape in shapes.items():
        if k in sd:
            fitted = _fit(sd[k], shape)
            if fitted is None:
                wrong.append(f"{k} {tuple(sd[k].shape)} (expected {shape})")
            out[k] = fitted
    problems = []
    for name, items in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)):
        if items:
            more = " ..." if len(items) > 8 else ""
            problems.append(f"{len(items)} {name}: {', '.join(items[:8])}{more}")
    if problems:
        raise ValueError(f"{what}: " + "; ".join(problems))
    return out


# -- export ----------------------------------------------------------------------------------


def export_state_dict(enc: EncoderWeights, fmt: str) -> dict[str, Tensor]:
    """Canonical encoder weights -> the target's key names and exact shapes.

    For ``hf`` the pooler LayerNorm (``layernorm.*``, not part of the encoder and never
    pretrained) is filled with its fresh-init values, ones and zeros, so the load is strict.
    """
    check_format(fmt)
    named, unplaced = _rename(enc.state_dict, fmt, reverse=False)
    assert not unplaced, unplaced  # canonical keys always have a rule
    out = _conform(named, target_shapes(fmt, enc.size, enc.in_chans), f"canonical -> {fmt}")
    if fmt == "hf":
        c = get_size(enc.size).dims[-1]
        ref = enc.state_dict["downsample_layers.0.0.weight"]
        out["layernorm.weight"] = torch.ones(c, dtype=ref.dtype)
        out["layernorm.bias"] = torch.zeros(c, dtype=ref.dtype)
    return {k: v.contiguous() for k, v in out.items()}


def load_into(model: nn.Module, sd: Mapping[str, Tensor], fmt: str) -> None:
    """Load exported weights into a target model, strictly except for its head keys."""
    # A model built on the meta device takes the tensors themselves (no init, no copy).
    on_meta = any(p.is_meta for p in model.parameters())
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=on_meta)
    missing = [k for k in missing if not _HEAD[fmt].fullmatch(k)]
    if missing or unexpected:
        raise ValueError(
            f"{fmt} load is not strict: missing {missing[:8]}, unexpected {unexpected[:8]}"
        )


def save_weights(sd: Mapping[str, Tensor], path: str | os.PathLike, metadata: dict) -> None:
    """safetensors when the name ends in ``.safetensors``, else ``torch.save`` of the dict."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(dict(sd), path, metadata={k: str(v) for k, v in metadata.items()})
    else:
        torch.save(dict(sd), path)


# -- verification ----------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    error: float  # max |a - b| / max |b|
    tolerance: float

    @property
    def ok(self) -> bool:
        return math.isfinite(self.error) and self.error <= self.tolerance


def _rel_err(a: Tensor, ref: Tensor) -> float:
    scale = ref.abs().max().clamp(min=1e-12)
    return ((a - ref).abs().max() / scale).item()


@torch.no_grad()
def verify(
    exported: Mapping[str, Tensor],
    enc: EncoderWeights,
    fmt: str,
    *,
    image_size: int = 64,
    batch: int = 2,
    seed: int = 0,
    depthwise_impl: str = "minkowski",
    tolerance: float = VERIFY_TOLERANCE,
) -> list[Check]:
    """Compare the exported weights in their target against the sparse encoder (fp32, eval).

    The sparse FCMAE encoder is loaded with ``enc`` (canonical -> sparse layout) and run with
    every patch visible; the target's last-stage features (timm ``forward_features``, HF
    ``last_hidden_state``, dense ``forward_features``) must match. For ``dense`` the dense
    twin is also loaded from ``exported`` and compared under a random mask.
    """
    from fcmae.model import create_fcmae

    gen = torch.Generator().manual_seed(seed)
    imgs = torch.randn(batch, enc.in_chans, image_size, image_size, generator=gen)  # (B,C,H,W)
    fcmae = create_fcmae(
        enc.size, "sparse", in_chans=enc.in_chans, depthwise_impl=depthwise_impl
    ).eval()
    fcmae.encoder.load_state_dict(dense_to_sparse(enc.state_dict, prefix=""), strict=True)
    grid = (image_size // fcmae.patch_size, image_size // fcmae.patch_size)
    visible = torch.zeros(batch, *grid)  # (B, gh, gw), 1 = removed
    ref = fcmae.encoder(imgs, visible)  # (B, C3, H/32, W/32)

    # Targets are built on the meta device and take the tensors: skips their random init.
    # The comparison runs in fp32 whatever the stored dtype.
    exported = {k: v.float() if v.is_floating_point() else v for k, v in exported.items()}
    target = build_target(fmt, enc.size, enc.in_chans, device="meta").eval()
    load_into(target, exported, fmt)
    if fmt == "timm":
        feats = target.forward_features(imgs)  # (B, C3, H/32, W/32)
    elif fmt == "hf":
        feats = target(pixel_values=imgs).last_hidden_state  # (B, C3, H/32, W/32)
    else:
        feats = target.forward_features(imgs).permute(0, 3, 1, 2)  # (B,h,w,C3) -> (B,C3,h,w)
    checks = [Check(f"{fmt} vs sparse, all visible", _rel_err(feats, ref), tolerance)]
    if fmt == "dense":
        with torch.device("meta"):
            twin = create_fcmae(enc.size, "dense", in_chans=enc.in_chans).eval()
        twin.encoder.load_state_dict(exported, strict=True, assign=True)
        mask = fcmae.random_mask(imgs, generator=gen)  # (B, gh, gw)
        err = _rel_err(twin.encoder(imgs, mask), fcmae.encoder(imgs, mask))
        checks.append(Check("dense twin vs sparse, random mask", err, tolerance))
    return checks


# -- the whole job ---------------------------------------------------------------------------


@dataclass
class ExportResult:
    output: Path
    fmt: str
    size: str
    layout: str
    num_tensors: int
    num_params: int
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def check_export_args(
    checkpoint: str | os.PathLike, output: str | os.PathLike, fmt: str, force: bool
) -> None:
    """Bad user input as one ValueError line, before any work."""
    check_format(fmt)
    if not Path(checkpoint).is_file():
        raise ValueError(f"checkpoint {checkpoint} does not exist")
    out = Path(output)
    if out.is_dir():
        raise ValueError(f"output {out} is a directory; give a file name")
    if out.exists() and not force:
        raise ValueError(f"output {out} exists; pass --force to overwrite it")
    if not out.parent.is_dir():
        raise ValueError(f"output folder {out.parent} does not exist; create it first")


def export_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    fmt: str,
    *,
    do_verify: bool = False,
    force: bool = False,
    **verify_kw,
) -> ExportResult:
    """Read ``checkpoint``, write ``fmt`` weights to ``output``; optionally verify them.

    The file is written under a temporary name, verified from disk, and moved into place only
    when every check passes (a failed check leaves nothing behind; see ``ExportResult.ok``).
    """
    check_export_args(checkpoint, output, fmt, force)
    enc = to_canonical(load_weights(checkpoint))
    log.info(
        "read %s: %s, size %s, in_chans %d; dropped %d non-encoder key(s)",
        checkpoint,
        enc.layout,
        enc.size,
        enc.in_chans,
        len(enc.dropped),
    )
    sd = export_state_dict(enc, fmt)
    out = Path(output)
    tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}{out.suffix}")  # same suffix, same dir
    meta = {"fcmae_format": fmt, "fcmae_size": enc.size, "fcmae_in_chans": enc.in_chans}
    checks: list[Check] = []
    try:
        save_weights(sd, tmp, meta)
        if do_verify:
            checks = verify(load_weights(tmp), enc, fmt, **verify_kw)
            for c in checks:
                log.info(
                    "verify %s: max rel error %.3g (tolerance %.0e)", c.name, c.error, c.tolerance
                )
        if all(c.ok for c in checks):
            os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    n = sum(v.numel() for v in sd.values())
    return ExportResult(out, fmt, enc.size, enc.layout, len(sd), n, checks)


def load_pretrained(
    model: nn.Module, path: str | os.PathLike, fmt: str = "timm", expect_size: str | None = None
) -> EncoderWeights:
    """Initialise a target model's encoder from any supported checkpoint (converted on the fly).

    Used by finetuning: the head (``head.*`` for timm) keeps its fresh initialisation. With
    ``expect_size``, weights of another size are a ValueError naming both.
    """
    enc = to_canonical(load_weights(path))
    if expect_size is not None and enc.size != expect_size:
        raise ValueError(
            f"{path} holds ConvNeXt V2-{enc.size} weights, but the model is {expect_size}; "
            f"pass model={enc.size}"
        )
    load_into(model, export_state_dict(enc, fmt), fmt)
    return enc
