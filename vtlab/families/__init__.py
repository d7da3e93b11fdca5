"""The family registry: one module per upstream model family (vtlab.families.siglip, idefics2, idefics3, llava_next).

Ask a family for anything family-specific: `get_family(cfg.model.family)`. Adding a family is one module that
subclasses `Family` and calls `register_family` (imported here), plus a preset YAML in conf/model/.
`processor_for(cfg)` / `preprocess(images, cfg)` are the single-frame preprocessing of a config's family,
matching transformers' PIL image processors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vtlab.families import (  # noqa: F401  (each registers its family and tiling)
    clip,
    dinov2,
    fused,
    idefics2,
    idefics3,
    llava_next,
    siglip,
    siglip2,
)
from vtlab.families.base import FAMILIES, Family, Layout, family_for_model_type, get_family, register_family
from vtlab.families.pixels import ImageLike
from vtlab.families.tiler import TILINGS, ImagePlan, Tiler, TilingScheme, register_tiling

TOWER_ONLY_FAMILY = siglip.SIGLIP.name  # the family of a tower-only file with no owning model (timm, vtlab)


class FrameTransform:
    """A family's single-frame preprocessing at `size` (picklable, so DataLoader workers can use it)."""

    def __init__(self, family: Any, size: int) -> None:
        self.family, self.size = str(getattr(family, "value", family)), size

    def __call__(self, image: ImageLike) -> torch.Tensor:
        return get_family(self.family).preprocess_frame(image, self.size)


def frame_transform(model_cfg: Any, size: int) -> FrameTransform:
    """The transform of `task=train` / `task=eval` data: one square frame at `size`, as the family's processor."""
    return FrameTransform(model_cfg.family, size)


def processor_for(cfg: Any) -> Any:
    """The preprocessor of a config's family, sized to the tower input (`model.input_size` or `image_size`)."""
    m = cfg.model
    return get_family(m.family).processor(m.input_size or m.image_size, m.longest_edge)


def preprocess(images: ImageLike | Sequence[ImageLike], cfg: Any) -> torch.Tensor | list[torch.Tensor]:
    """A batch (B, 3, S, S) of one frame per image; for a family whose processor keeps each image's own size
    (idefics3: sides up to multiples of the frame, unsplit) a list of (3, H', W')."""
    proc = processor_for(cfg)
    batch = list(images) if isinstance(images, list | tuple) else [images]
    out = [proc(im) for im in batch]
    if any(o.shape != out[0].shape for o in out) or getattr(proc, "keeps_size", False):
        return out
    return torch.stack(out)


__all__ = ["FAMILIES", "FrameTransform", "frame_transform", "TILINGS", "TOWER_ONLY_FAMILY", "Family", "ImagePlan", "Layout", "Tiler", "TilingScheme", "family_for_model_type",
           "get_family", "preprocess", "processor_for", "register_family", "register_tiling"]
