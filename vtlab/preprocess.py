"""Image preprocessing per preset family, matching transformers' PIL image processors.

Mirrors (towers-and-connectors.md (e), f.12) the `*ImageProcessorPil` classes of transformers v5, which
resize uint8 images with Pillow and then rescale and normalise in float:
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

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

ImageLike = Any  # PIL.Image.Image | torch.Tensor (uint8) | np.ndarray (uint8)

MAX_IMAGE_SIZE = 4096  # Idefics3 upper bound on any side after the longest-edge resize


def to_uint8_hwc(image: ImageLike) -> np.ndarray:
    """An RGB uint8 (H, W, 3) array from a PIL image or a uint8 CHW / HWC / HW tensor or array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
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
        array = np.asarray(Image.fromarray(np.ascontiguousarray(array), "RGBA").convert("RGB"))
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


class SiglipPreprocessor:
    """Square BICUBIC resize to `size`, rescale, normalise (0.5 / 0.5): `SiglipImageProcessorPil`."""

    def __init__(self, size: int, mean: Sequence[float] = (0.5,) * 3, std: Sequence[float] = (0.5,) * 3,
                 resample: int = Image.Resampling.BICUBIC) -> None:
        self.size, self.mean, self.std, self.resample = size, tuple(mean), tuple(std), resample

    def __call__(self, image: ImageLike) -> torch.Tensor:
        """(3, size, size) float32."""
        return normalise(resize(to_uint8_hwc(image), self.size, self.size, self.resample), self.mean, self.std)


class LlavaNextPreprocessor(SiglipPreprocessor):
    """The LlavaNext base crop (Granite: 0.5 / 0.5): the whole image resized to size x size, BICUBIC."""


def longest_edge_size(height: int, width: int, longest_edge: int) -> tuple[int, int]:
    """Idefics3's first resize: longest side -> `longest_edge`, short side int(long/aspect) made even, cap 4096."""
    aspect = width / height
    if width >= height:
        width = longest_edge
        height = int(width / aspect)
        height += height % 2
    else:
        height = longest_edge
        width = int(height * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    aspect = width / height
    if width >= height and width > MAX_IMAGE_SIZE:
        width, height = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE / aspect)
    elif height > width and height > MAX_IMAGE_SIZE:
        height, width = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE * aspect)
    return max(height, 1), max(width, 1)


def encoder_multiple_size(height: int, width: int, frame: int) -> tuple[int, int]:
    """Idefics3 `resize_for_vision_encoder`: both sides up to multiples of `frame` (aspect slightly changed)."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / frame) * frame
        height = math.ceil(int(width / aspect) / frame) * frame
    else:
        height = math.ceil(height / frame) * frame
        width = math.ceil(int(height * aspect) / frame) * frame
    return height, width


class Idefics3Preprocessor:
    """SmolVLM / Idefics3: longest-edge resize, then sides to multiples of `image_size` (LANCZOS), normalise."""

    def __init__(self, image_size: int, longest_edge: int | None = None, mean: Sequence[float] = (0.5,) * 3,
                 std: Sequence[float] = (0.5,) * 3, resample: int = Image.Resampling.LANCZOS) -> None:
        self.image_size = image_size
        self.longest_edge = longest_edge or 4 * image_size
        self.mean, self.std, self.resample = tuple(mean), tuple(std), resample

    def resized(self, image: ImageLike) -> np.ndarray:
        """The uint8 (H', W', 3) image after both resizes; H' and W' are multiples of image_size."""
        array = to_uint8_hwc(image)
        h, w = longest_edge_size(array.shape[0], array.shape[1], self.longest_edge)
        array = resize(array, h, w, self.resample)
        h, w = encoder_multiple_size(h, w, self.image_size)
        return resize(array, h, w, self.resample)

    def __call__(self, image: ImageLike) -> torch.Tensor:
        """(3, H', W') float32, H' and W' multiples of image_size (not split into frames)."""
        return normalise(self.resized(image), self.mean, self.std)

    def frames(self, image: ImageLike) -> tuple[torch.Tensor, int, int]:
        """The processor's split: (F, 3, S, S) row-major tiles then the global frame, plus (rows, cols)."""
        array = self.resized(image)
        s = self.image_size
        h, w = array.shape[:2]
        if h <= s and w <= s:
            return normalise(array, self.mean, self.std)[None], 0, 0
        rows, cols = h // s, w // s
        tiles = [array[r * s:(r + 1) * s, c * s:(c + 1) * s] for r in range(rows) for c in range(cols)]
        tiles.append(resize(array, s, s, self.resample))
        return torch.stack([normalise(t, self.mean, self.std) for t in tiles]), rows, cols


def processor_for(cfg: Any) -> SiglipPreprocessor | Idefics3Preprocessor:
    """The preprocessor of a config's family, sized to the tower input (`model.input_size` or `image_size`)."""
    m = cfg.model
    size = m.input_size or m.image_size
    family = getattr(m.family, "value", m.family)
    if family == "idefics3":
        return Idefics3Preprocessor(size)
    if family == "llava_next":
        return LlavaNextPreprocessor(size)
    return SiglipPreprocessor(size)


def preprocess(images: ImageLike | Sequence[ImageLike], cfg: Any) -> torch.Tensor | list[torch.Tensor]:
    """A batch (B, 3, S, S) for siglip / llava_next; for idefics3 a list of (3, H', W') (sizes differ)."""
    proc = processor_for(cfg)
    batch = list(images) if isinstance(images, list | tuple) else [images]
    out = [proc(im) for im in batch]
    if isinstance(proc, Idefics3Preprocessor):
        return out
    return torch.stack(out)
