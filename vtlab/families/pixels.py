"""Pixel primitives shared by every family's preprocessing, matching transformers' PIL image processors.

transformers v5's `*ImageProcessorPil` classes resize uint8 images with Pillow and then rescale and normalise
in float; `to_uint8_hwc` converts any input to RGB as their `convert_to_rgb` does (transparency composited
onto white: RGBA, LA, P with a transparency index, 4-channel arrays). The families' own rules
(vtlab.families.siglip / idefics3 / llava_next) are built from these:
- siglip (`SiglipImageProcessorPil`): RGB, resize to exactly size x size with BICUBIC (no aspect kept, no
  crop), x / 255, (x - 0.5) / 0.5.
- idefics3 (`Idefics3ImageProcessorPil`, SmolVLM settings): resize so the longest edge is `longest_edge`
  (4 x image_size, 2048 for SmolVLM; the short side is int(long / aspect) rounded up to even, both capped at
  4096), then `resize_for_vision_encoder` (both sides up to multiples of image_size), LANCZOS, rescale,
  normalise 0.5 / 0.5. `__call__` stops there (no splitting); `frames()` also does the processor's split into
  row-major image_size tiles plus a global image_size frame last.
- llava_next (`LlavaNextImageProcessorPil` with Granite's 0.5 / 0.5 mean/std and size = crop = image_size): the
  base crop, i.e. the whole image resized to size x size with BICUBIC (the following shortest-edge resize and
  center crop are then no-ops), rescaled and normalised. The any-res tiles are not produced here.
Inputs: PIL images, or uint8 tensors / arrays in CHW or HWC layout (1, 3 or 4 channels). The torchvision
backend of transformers v5 (antialiased tensor resize; LANCZOS may fall back to BICUBIC) is NOT what is matched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

ImageLike = Any  # PIL.Image.Image | torch.Tensor (uint8) | np.ndarray (uint8)

MAX_IMAGE_SIZE = 4096  # Idefics3 upper bound on any side after the longest-edge resize


def pil_to_rgb(image: Image.Image) -> Image.Image:
    """transformers' `convert_to_rgb`: an image with an alpha band or a transparency index is composited onto
    white; any other mode is converted to RGB."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 -> (H, W, 3) uint8: alpha * rgb + (1 - alpha) * 255, rounded (transformers' array rule)."""
    alpha = rgba[..., 3:4] / 255
    return np.round(alpha * rgba[..., :3] + (1 - alpha) * 255).astype(np.uint8)


def to_uint8_hwc(image: ImageLike) -> np.ndarray:
    """An RGB uint8 (H, W, 3) array from a PIL image (any mode) or a uint8 CHW / HWC / HW tensor or array."""
    if isinstance(image, Image.Image):
        return np.asarray(pil_to_rgb(image))
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8:
            raise TypeError(f"preprocess: tensors must be uint8 (0..255), got {image.dtype}; convert floats first")
        array = image.detach().cpu().numpy()
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"preprocess: arrays must be uint8 (0..255), got {image.dtype}")
        array = image
    else:
        raise TypeError(f"preprocess: expected a PIL image or a uint8 tensor/array, got {type(image).__name__}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"preprocess: expected an image of shape (C, H, W) or (H, W, C), got {tuple(array.shape)}")
    first, last = array.shape[0] in (1, 3, 4), array.shape[-1] in (1, 3, 4)
    if first and (not last or isinstance(image, torch.Tensor)):  # CHW (the torch convention when ambiguous)
        array = array.transpose(1, 2, 0)
    elif not last:
        raise ValueError(f"preprocess: no channel dimension of size 1, 3 or 4 in shape {tuple(array.shape)}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    elif array.shape[-1] == 4:
        array = composite_on_white(array)
    return np.ascontiguousarray(array)


def resize(array: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    """Pillow resize of a uint8 (H, W, 3) array to (height, width), as transformers' PIL backend does."""
    return np.asarray(Image.fromarray(array).resize((width, height), resample=resample))


def normalise(array: np.ndarray, mean: Sequence[float], std: Sequence[float], scale: float = 1 / 255) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W): rescale by `scale`, then (x - mean) / std per channel."""
    x = array.astype(np.float32) * np.float32(scale)
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    return torch.from_numpy(((x - m) / s).transpose(2, 0, 1).copy())
