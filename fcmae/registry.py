"""The one registry of ConvNeXt V2 sizes, read by the models, the Hydra configs and the tests.

Figures beside each size are the paper's (Woo et al., 2023): parameters and GFLOPs of the
classifier with a 1000-class head at 224x224, and ImageNet-1K top-1 after FCMAE + finetuning.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSize:
    name: str
    depths: tuple[int, int, int, int]
    dims: tuple[int, int, int, int]
    params_m: float  # millions, classifier with a 1000-class head
    gflops: float  # at 224x224
    top1: float  # IN-1K, FCMAE pretraining + finetuning

    @property
    def timm_name(self) -> str:
        return f"convnextv2_{self.name}"


MODEL_SIZES: dict[str, ModelSize] = {
    s.name: s
    for s in (
        ModelSize("atto", (2, 2, 6, 2), (40, 80, 160, 320), 3.7, 0.55, 76.7),
        ModelSize("femto", (2, 2, 6, 2), (48, 96, 192, 384), 5.2, 0.78, 78.5),
        ModelSize("pico", (2, 2, 6, 2), (64, 128, 256, 512), 9.1, 1.37, 80.3),
        ModelSize("nano", (2, 2, 8, 2), (80, 160, 320, 640), 15.6, 2.45, 81.9),
        ModelSize("tiny", (3, 3, 9, 3), (96, 192, 384, 768), 28.6, 4.47, 83.0),
        ModelSize("base", (3, 3, 27, 3), (128, 256, 512, 1024), 89.0, 15.4, 84.9),
        ModelSize("large", (3, 3, 27, 3), (192, 384, 768, 1536), 198.0, 34.4, 85.8),
        ModelSize("huge", (3, 3, 27, 3), (352, 704, 1408, 2816), 660.0, 115.0, 86.3),
    )
}


def get_size(name: str) -> ModelSize:
    """Look a size up by name; a ValueError lists the known names."""
    try:
        return MODEL_SIZES[name]
    except KeyError:
        known = ", ".join(MODEL_SIZES)
        raise ValueError(f"unknown model size {name!r}; expected one of: {known}") from None
