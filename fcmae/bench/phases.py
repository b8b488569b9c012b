"""The measured phases and the deterministic set-up they run on.

Phases (each a call that runs one batch):

* ``encoder_fwd``: ``model.encoder(imgs, mask)`` under ``torch.no_grad()`` (inference);
* ``encoder_fwd_bwd``: encoder forward, ``out.sum().backward()``, gradients set to None first;
* ``train_step``: FCMAE forward (loss), backward and an AdamW step.

Both engines get the same weights (the sparse model's state dict converted with
:func:`fcmae.sparse_to_dense`, GRN gamma/beta and biases randomised so that no op is an
identity), the same images and the same mask, all drawn from ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fcmae.bench.config import Case, Variant
from fcmae.convert import sparse_to_dense
from fcmae.masking import random_mask
from fcmae.model import FCMAE, create_fcmae


@dataclass
class Inputs:
    imgs: Tensor  # (B, 3, H, W)
    mask: Tensor  # (B, H/p, W/p) float, 1 = removed

    @property
    def visible(self) -> int:
        """Visible patches in the whole batch."""
        return int((self.mask < 0.5).sum())


def make_inputs(case: Case, seed: int, device: torch.device, patch_size: int = 32) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randn(case.batch, 3, case.height, case.width, generator=g)
    grid = (case.height // patch_size, case.width // patch_size)
    mask = random_mask(case.batch, grid, case.mask_ratio, generator=g)
    return Inputs(imgs.to(device), mask.to(device))


def _randomize_zero_init_(model: torch.nn.Module, seed: int) -> None:
    """GRN gamma/beta and biases start at zero; give them small values so nothing is skipped."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("gamma", "beta", "bias")):
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def make_models(
    case: Case, variants: list[Variant], seed: int, device: torch.device, patch_size: int = 32
) -> dict[str, FCMAE]:
    """One model per engine (sparse variants share one model and switch implementation)."""
    torch.manual_seed(seed)
    engines = {v.engine for v in variants}
    sparse = create_fcmae(case.model, "sparse", patch_size=patch_size, mask_ratio=case.mask_ratio)
    _randomize_zero_init_(sparse, seed)
    models: dict[str, FCMAE] = {}
    if "sparse" in engines:
        models["sparse"] = sparse
    if "dense" in engines:
        dense = create_fcmae(
            case.model, "dense", patch_size=patch_size, mask_ratio=case.mask_ratio
        )
        dense.load_state_dict(sparse_to_dense(sparse.state_dict()), strict=True)
        models["dense"] = dense
    return {k: m.to(device).train() for k, m in models.items()}


def select(models: dict[str, FCMAE], variant: Variant) -> FCMAE:
    model = models[variant.engine]
    if variant.engine == "sparse":
        model.encoder.set_depthwise_impl(variant.impl)
    return model


@torch.no_grad()
def encoder_max_abs_diff(models: dict[str, FCMAE], variant: Variant, inputs: Inputs):
    """``(max |sparse - dense|, max |dense|)`` of the encoder outputs ``(B, C3, h, w)``."""
    dense = models["dense"].encoder(inputs.imgs, inputs.mask)
    sparse = select(models, variant).encoder(inputs.imgs, inputs.mask)
    return (sparse - dense).abs().max().item(), dense.abs().max().item()


def make_phase(phase: str, model: FCMAE, inputs: Inputs, lr: float = 1.0e-4) -> Callable[[], None]:
    """A no-argument callable that runs ``phase`` once on ``inputs``."""
    imgs, mask = inputs.imgs, inputs.mask
    if phase == "encoder_fwd":

        def run() -> None:
            with torch.no_grad():
                model.encoder(imgs, mask)

    elif phase == "encoder_fwd_bwd":

        def run() -> None:
            model.zero_grad(set_to_none=True)
            model.encoder(imgs, mask).sum().backward()

    elif phase == "train_step":
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05)

        def run() -> None:
            opt.zero_grad(set_to_none=True)
            loss, _, _ = model(imgs, mask)
            loss.backward()
            opt.step()

        run.optimizer = opt  # type: ignore[attr-defined]  # kept so callers can drop it
    else:
        raise ValueError(f"unknown phase {phase!r}")
    return run


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but torch sees no GPU; use device=cpu or device=auto")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
