"""Images of any size for VLM towers: the processors' tiling schemes and the models' token packing.

- `vtlab.tiling.idefics3`: SmolVLM / Idefics3 image splitting (tiles row-major + a global frame).
- `vtlab.tiling.anyres`: LLaVA-NeXT / Granite-Vision "anyres" (base + tiles; unpadding + image_newline).
- `vtlab.tiling.plan`: `Tiler`, one entry point per stack (geometry, pixels, packing), and `ImagePlan`.
"""

from vtlab.tiling.anyres import (
    GRANITE_PINPOINTS,
    AnyresLayout,
    anyres_frames,
    anyres_layout,
    pack_anyres,
    pack_anyres_batch,
    resized_size_to_fit,
    select_best_resolution,
    unpadded_size,
)
from vtlab.tiling.idefics3 import SplitLayout, pack_split, pack_split_batch, split_frames, split_layout
from vtlab.tiling.plan import TILINGS, ImagePlan, Tiler, image_size_of

__all__ = [
    "GRANITE_PINPOINTS",
    "TILINGS",
    "AnyresLayout",
    "ImagePlan",
    "SplitLayout",
    "Tiler",
    "anyres_frames",
    "anyres_layout",
    "image_size_of",
    "pack_anyres",
    "pack_anyres_batch",
    "pack_split",
    "pack_split_batch",
    "resized_size_to_fit",
    "select_best_resolution",
    "split_frames",
    "split_layout",
    "unpadded_size",
]
