"""LLaVA-NeXT / Granite-Vision "anyres" tiling: crop geometry, tile pixels and LM-side feature packing.

Mirrors transformers v5 (towers-and-connectors.md (c.2), (e), f.5/9/13/14):
- `select_best_resolution` of `image_processing_utils` (most effective pixels, then least waste; the first
  pinpoint wins a full tie, so pinpoint order matters) and `get_patch_output_size` (fit keeping aspect, ceil).
- `LlavaNextImageProcessorPil`: frame 0 is the whole image resized to crop x crop (BICUBIC); then the image
  resized to fit the best pinpoint, padded symmetrically with 0 in uint8 space (so -1 after Granite's 0.5 / 0.5
  normalisation; the odd pixel goes right / bottom) and cut into crop x crop tiles, row-major. The processor's
  per-crop `resize(shortest_edge=crop)` + `center_crop(crop)` are identity on crop x crop frames (Pillow returns
  a copy for a same-size resize), so they are skipped here. Then x / 255 and (x - mean) / std.
- `LlavaNextModel.pack_image_features` + `unpad_image` (base tokens first, f.14): the tiles' features laid out
  as a (rows * grid, cols * grid) map, the letterbox rows / columns removed with `int(round(x, 7))`, one
  `image_newline` column appended per row, flattened row-major. A single frame packs as base + one newline.
- `LlavaNextProcessor._get_number_of_features` (strategy "full", no CLS): grid^2 + h' * w' + h' tokens.
Pinpoints and sizes are (height, width) pairs throughout (upstream's "(width, height)" docstring is wrong,
f.13). Pinpoints must be multiples of `crop` (upstream's processor and model disagree otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vtlab.preprocess import ImageLike, normalise, resize, to_uint8_hwc

# Granite-Vision's `image_grid_pinpoints` (config.json of ibm-granite/granite-vision-3.x; order as there): every
# (384 a, 384 b) with a * b <= 10. Sources: FMS `fms/models/llava_next.py` `_granite_3_2_2b_grid`, the
# llama.cpp granitevision guide (`image_grid_pinpoints` "from $GRANITE_MODEL/config.json"), and a granite-vision
# 4.1 config copied in a docling-mlx test; all three give this exact list of 27.
GRANITE_PINPOINTS: tuple[tuple[int, int], ...] = (
    (384, 384), (384, 768), (384, 1152), (384, 1536), (384, 1920),
    (384, 2304), (384, 2688), (384, 3072), (384, 3456), (384, 3840),
    (768, 384), (768, 768), (768, 1152), (768, 1536), (768, 1920),
    (1152, 384), (1152, 768), (1152, 1152),
    (1536, 384), (1536, 768),
    (1920, 384), (1920, 768),
    (2304, 384), (2688, 384), (3072, 384), (3456, 384), (3840, 384),
)  # fmt: skip

Pinpoints = Sequence[Sequence[int]]


def select_best_resolution(height: int, width: int, pinpoints: Pinpoints) -> tuple[int, int]:
    """The (h, w) pinpoint keeping the most image pixels when fitted (aspect kept); ties -> least padding."""
    best: tuple[int, int] | None = None
    best_effective, best_wasted = 0, math.inf
    for h, w in pinpoints:
        scale = min(w / width, h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = w * h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (int(h), int(w)), effective, wasted
    if best is None:
        raise ValueError(f"anyres: no usable pinpoint in {list(pinpoints)!r} for a {height}x{width} image")
    return best


def resized_size_to_fit(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """`get_patch_output_size`: the size of (height, width) scaled to fit (target_h, target_w), ceil, clamped."""
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def unpadded_size(height: int, width: int, grid_h: int, grid_w: int) -> tuple[int, int]:
    """`unpad_image` on a (grid_h, grid_w) feature map of a (height, width) image: the kept (h', w').

    The letterbox side loses `pad = (cur - int(round(cur_other / other * side, 7))) // 2` on both ends.
    """
    if width / height > grid_w / grid_h:
        new_h = int(round(height * (grid_w / width), 7))
        return grid_h - 2 * ((grid_h - new_h) // 2), grid_w
    new_w = int(round(width * (grid_h / height), 7))
    return grid_h, grid_w - 2 * ((grid_w - new_w) // 2)


@dataclass(frozen=True)
class AnyresLayout:
    """Geometry of one image under anyres tiling (all sizes (height, width))."""

    image_size: tuple[int, int]  # original (H, W)
    best_resolution: tuple[int, int]  # the chosen pinpoint
    rows: int  # tiles down
    cols: int  # tiles across
    num_frames: int  # rows * cols + 1 (base frame first)
    grid: int  # feature tokens per side of one frame (27 for 384 / 14)
    unpadded: tuple[int, int]  # (h', w') of the tile feature map after unpadding
    num_tokens: int  # LM tokens: grid^2 + h' * w' + h'


def anyres_layout(
    height: int, width: int, *, pinpoints: Pinpoints = GRANITE_PINPOINTS, crop: int = 384, grid: int = 27
) -> AnyresLayout:
    """The tiling and token count of a (height, width) image, without touching pixels."""
    if height < 1 or width < 1:
        raise ValueError(f"anyres: image size must be positive, got {height}x{width}")
    if crop < 1 or grid < 1:
        raise ValueError(f"anyres: crop and grid must be positive, got crop={crop}, grid={grid}")
    bad = [tuple(p) for p in pinpoints if p[0] % crop or p[1] % crop or p[0] < crop or p[1] < crop]
    if bad:
        raise ValueError(f"anyres: pinpoints must be positive multiples of crop={crop}, got {bad}")
    best_h, best_w = select_best_resolution(height, width, pinpoints)
    rows, cols = best_h // crop, best_w // crop
    unpadded = unpadded_size(height, width, rows * grid, cols * grid)
    num_tokens = grid * grid + unpadded[0] * unpadded[1] + unpadded[0]
    return AnyresLayout(
        image_size=(int(height), int(width)),
        best_resolution=(best_h, best_w),
        rows=rows,
        cols=cols,
        num_frames=rows * cols + 1,
        grid=grid,
        unpadded=unpadded,
        num_tokens=num_tokens,
    )


def anyres_frames(
    image: ImageLike,
    *,
    pinpoints: Pinpoints = GRANITE_PINPOINTS,
    crop: int = 384,
    mean: Sequence[float] = (0.5,) * 3,
    std: Sequence[float] = (0.5,) * 3,
    grid: int = 27,
    resample: int = Image.Resampling.BICUBIC,
) -> tuple[torch.Tensor, AnyresLayout]:
    """(num_frames, 3, crop, crop) float32 frames, base first then tiles row-major, and the image's layout.

    `grid` only fills in the layout (tokens per frame side of the tower that will see these frames).
    """
    array = to_uint8_hwc(image)
    height, width = array.shape[:2]
    layout = anyres_layout(height, width, pinpoints=pinpoints, crop=crop, grid=grid)
    base = normalise(resize(array, crop, crop, resample), mean, std)

    best_h, best_w = layout.best_resolution
    new_h, new_w = resized_size_to_fit(height, width, best_h, best_w)
    top, left = (best_h - new_h) // 2, (best_w - new_w) // 2  # the odd pixel of padding goes bottom / right
    canvas = np.zeros((best_h, best_w, 3), dtype=np.uint8)  # padding is 0 before rescale / normalise
    canvas[top : top + new_h, left : left + new_w] = resize(array, new_h, new_w, resample)
    tiles = normalise(canvas, mean, std).view(3, layout.rows, crop, layout.cols, crop)
    tiles = tiles.permute(1, 3, 0, 2, 4).reshape(layout.rows * layout.cols, 3, crop, crop)
    return torch.cat([base[None], tiles]), layout


def pack_anyres(features: torch.Tensor, layout: AnyresLayout, newline: torch.Tensor) -> torch.Tensor:
    """One image's (F, grid^2, T) frame features (base first) -> (num_tokens, T) LM tokens.

    F == layout.num_frames: base tokens, then the unpadded tile map with a newline after each row. F == 1 (base
    only, as upstream allows): base tokens then one newline, grid^2 + 1 tokens.
    """
    g = layout.grid
    if features.dim() != 3 or features.shape[1] != g * g:
        raise ValueError(f"anyres: expected features (frames, {g * g}, T), got {tuple(features.shape)}")
    dim = features.shape[-1]
    newline = newline.to(device=features.device, dtype=features.dtype)
    if features.shape[0] == 1:
        return torch.cat([features[0], newline[None]])
    if features.shape[0] != layout.num_frames:
        raise ValueError(f"anyres: {features.shape[0]} frames of features for a layout of {layout.num_frames}")
    rows, cols = layout.rows, layout.cols
    grid_map = features[1:].reshape(rows, cols, g, g, dim).permute(0, 2, 1, 3, 4).reshape(rows * g, cols * g, dim)
    h, w = layout.unpadded
    top, left = (rows * g - h) // 2, (cols * g - w) // 2
    grid_map = grid_map[top : top + h, left : left + w]
    grid_map = torch.cat([grid_map, newline.expand(h, 1, dim)], dim=1)
    return torch.cat([features[0], grid_map.reshape(h * (w + 1), dim)])


def pack_anyres_batch(
    features: torch.Tensor, layouts: Sequence[AnyresLayout], newline: torch.Tensor
) -> list[torch.Tensor]:
    """Concatenated (sum of num_frames, grid^2, T) features of several images -> one (tokens_i, T) per image."""
    sizes = [layout.num_frames for layout in layouts]
    if features.shape[0] != sum(sizes):
        raise ValueError(f"anyres: {features.shape[0]} frames of features, layouts need {sum(sizes)} ({sizes})")
    return [pack_anyres(f, layout, newline) for f, layout in zip(features.split(sizes), layouts, strict=True)]
