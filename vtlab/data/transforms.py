"""SigLIP-style preprocessing: square bicubic resize to the tower input size, rescale to [0, 1], normalise.

Mirrors transformers' `SiglipImageProcessor` (do_resize to size x size with PIL bicubic, rescale 1/255,
normalise mean = std = 0.5, so pixels end in [-1, 1]) as used by SigLIP, Idefics3/SmolVLM's tower and
LlavaNext's tower, with torchvision. Works on PIL images and on uint8 CHW tensors. The tasks use each family's
own PIL-exact preprocessing instead (vtlab.families.frame_transform); this is the DataModule's default when none
is given.
"""

from __future__ import annotations

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
