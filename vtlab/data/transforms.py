"""SigLIP-style preprocessing: square bicubic resize to the tower input size, rescale to [0, 1], normalise.

Mirrors transformers' `SiglipImageProcessor` (do_resize to size x size with PIL bicubic, rescale 1/255,
normalise mean = std = 0.5, so pixels end in [-1, 1]) as used by SigLIP, Idefics3/SmolVLM's tower and
LlavaNext's tower. Works on PIL images (image folders) and on uint8 CHW tensors (the synthetic set).
`preset_transform` picks the preset family's resampling through vtlab.preprocess (what the tasks use).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchvision.transforms import v2

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


def siglip_transform(size: int, mean: tuple[float, ...] = SIGLIP_MEAN, std: tuple[float, ...] = SIGLIP_STD) -> v2.Compose:
    """PIL image or uint8 (C, H, W) tensor -> float32 (3, size, size) normalised tensor."""
    return v2.Compose(
        [
            v2.RGB(),
            # resize before ToImage: a PIL image is resized by PIL itself (what the HF processor does)
            v2.Resize((size, size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


def preset_transform(model_cfg: Any, size: int) -> Callable[[Any], torch.Tensor]:
    """The preset's own single-frame preprocessing (vtlab.preprocess, PIL like transformers' processors).

    siglip / llava_next: square BICUBIC resize (SiglipImageProcessor, LlavaNext's base crop); idefics3
    (SmolVLM): square LANCZOS resize, as the processor makes its global frame (the tiling into extra frames
    is not used for classification). All rescale to [0, 1] and normalise with mean = std = 0.5. Falls back to
    `siglip_transform` if vtlab.preprocess is unavailable.
    """
    try:
        from PIL import Image

        from vtlab.preprocess import SiglipPreprocessor
    except ImportError:
        return siglip_transform(size)
    family = getattr(model_cfg.family, "value", model_cfg.family)
    resample = Image.Resampling.LANCZOS if family == "idefics3" else Image.Resampling.BICUBIC
    return SiglipPreprocessor(size, resample=resample)
