"""SmolVLM / Idefics3 image splitting: frame geometry, frame pixels, LM-side packing and `<image>` token counts.

Mirrors transformers v5 (towers-and-connectors.md (c.1), (e) SmolVLM / Idefics3, f.12):
- `Idefics3ImageProcessorPil` (= `SmolVLMImageProcessorPil`), SmolVLM settings `size.longest_edge` 2048,
  `max_image_size.longest_edge` (the frame) 512, LANCZOS, mean / std 0.5:
  1. resize so the longest side is exactly `longest_edge` (small images are up-scaled too); the short side is
     int(long / aspect) rounded up to even, at least 1; then both sides capped at 4096 (this cap can only bite
     when `longest_edge` > 4096);
  2. `resize_for_vision_encoder`: both sides up to multiples of the frame (the short side from the rounded-up
     long side and the aspect, so the aspect ratio changes slightly);
  3. `split_images`: if a side exceeds the frame, (H'/S) x (W'/S) tiles row-major, then the global frame (the
     whole image resized to S x S) last; otherwise one frame and rows = cols = 0.
  With `do_image_splitting=False`: after step 1 the image is resized to S x S; one frame, rows = cols = 0.
- `SmolVLMProcessor` / `Idefics3Processor` prompt expansion (`get_image_prompt_string`): for a split image,
  `<fake_token_around_image><row_r_col_c>` + t x `<image>` per tile (row-major, a newline after each row), then
  `\\n<fake_token_around_image><global-img>` + t x `<image>` + `<fake_token_around_image>`; unsplit, only the
  global block. t = `image_seq_len` = (S / patch)^2 / scale_factor^2 (64 for SmolVLM: 32 x 32 patches, factor 4).
- The model (v5 `Idefics3Model` / `SmolVLMModel`: `masked_scatter` over the `<image>` positions) fills them with
  the connector output of the frames in pixel_values order, i.e. the frames' token blocks concatenated: tiles
  row-major, then the global frame.

The geometry (`split_layout`) reuses `longest_edge_size` / `encoder_multiple_size` and the pixels (`split_frames`)
reuse `Idefics3Preprocessor.frames` from `vtlab.preprocess`. Upstream's own geometry-only helper
`get_number_of_image_patches` is NOT mirrored: it ceils the pre-rounding short side, which disagrees with the
pixels it produces when the frame does not divide `longest_edge` (never at SmolVLM's 512 / 2048).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from vtlab.preprocess import (
    Idefics3Preprocessor,
    ImageLike,
    encoder_multiple_size,
    longest_edge_size,
    normalise,
    resize,
    to_uint8_hwc,
)

SMOLVLM_FRAME = 512  # max_image_size.longest_edge of the SmolVLM / SmolVLM2 preprocessor configs
SMOLVLM_LONGEST_EDGE = 2048  # size.longest_edge
SMOLVLM_TOKENS_PER_FRAME = 64  # image_seq_len: (512 / 16)^2 / 4^2


@dataclass(frozen=True)
class SplitLayout:
    """How one image is split into tower frames and how many `<image>` tokens it takes.

    image_size: the original (H, W). resized: the (H', W') the frames are cut from (after the longest-edge resize
    and `resize_for_vision_encoder`; (S, S) when not splitting). rows, cols: the tile grid, (0, 0) for a single
    frame as upstream returns. num_frames: rows * cols + 1 (global last) when split, else 1.
    num_tokens = num_frames * tokens_per_frame, the `<image>` tokens in the prompt.
    """

    image_size: tuple[int, int]
    resized: tuple[int, int]
    rows: int
    cols: int
    num_frames: int
    tokens_per_frame: int
    num_tokens: int

    @property
    def is_split(self) -> bool:
        """True when the image became tiles plus a global frame (rows, cols > 0)."""
        return self.rows > 0


def frame_tokens(frame: int = SMOLVLM_FRAME, patch: int = 16, scale_factor: int = 4) -> int:
    """Tokens per frame after pixel shuffle, upstream's image_seq_len: (frame // patch)^2 / factor^2.

    SmolVLM: 512, 16, 4 -> 64; Idefics3: 364, 14, 2 -> 169. The patch grid must be divisible by the factor.
    """
    grid = frame // patch  # a "valid" conv ignores the remainder pixels
    if grid < 1 or grid % scale_factor:
        raise ValueError(f"frame {frame} // patch {patch} gives a {grid}-grid not divisible by factor {scale_factor}")
    return (grid // scale_factor) ** 2


def split_layout(height: int, width: int, *, frame: int = SMOLVLM_FRAME, longest_edge: int | None = SMOLVLM_LONGEST_EDGE,
                 tokens_per_frame: int = SMOLVLM_TOKENS_PER_FRAME, do_splitting: bool = True) -> SplitLayout:
    """The processor's split of an image of (height, width), geometry only (no pixels).

    `longest_edge` None means 4 x frame (as `Idefics3Preprocessor`).
    """
    height, width = int(height), int(width)
    if height < 1 or width < 1 or frame < 1 or tokens_per_frame < 1:
        raise ValueError(f"split_layout: need positive sizes, got image {height}x{width}, frame {frame}, "
                         f"tokens_per_frame {tokens_per_frame}")
    longest_edge = longest_edge or 4 * frame
    h, w = longest_edge_size(height, width, longest_edge)
    if not do_splitting:
        return SplitLayout((height, width), (frame, frame), 0, 0, 1, tokens_per_frame, tokens_per_frame)
    h, w = encoder_multiple_size(h, w, frame)
    if h <= frame and w <= frame:  # both sides are multiples of the frame, so this means exactly one frame
        rows = cols = 0
        num_frames = 1
    else:
        rows, cols = h // frame, w // frame
        num_frames = rows * cols + 1
    return SplitLayout((height, width), (h, w), rows, cols, num_frames, tokens_per_frame,
                       num_frames * tokens_per_frame)


def split_frames(image: ImageLike, *, frame: int = SMOLVLM_FRAME, longest_edge: int | None = SMOLVLM_LONGEST_EDGE,
                 mean: Sequence[float] = (0.5,) * 3, std: Sequence[float] = (0.5,) * 3,
                 tokens_per_frame: int = SMOLVLM_TOKENS_PER_FRAME,
                 do_splitting: bool = True) -> tuple[torch.Tensor, SplitLayout]:
    """(num_frames, 3, frame, frame) float32 pixels as the PIL processor makes them, and the image's layout.

    Frames are the tiles row-major, then the global frame (split), or the single frame. LANCZOS throughout.
    """
    array = to_uint8_hwc(image)
    layout = split_layout(array.shape[0], array.shape[1], frame=frame, longest_edge=longest_edge,
                          tokens_per_frame=tokens_per_frame, do_splitting=do_splitting)
    proc = Idefics3Preprocessor(frame, longest_edge, mean=mean, std=std)
    if do_splitting:
        pixels, rows, cols = proc.frames(array)
    else:  # upstream: the longest-edge resize, then straight to frame x frame
        resample = Image.Resampling.LANCZOS
        small = resize(array, *longest_edge_size(array.shape[0], array.shape[1], proc.longest_edge), resample)
        pixels, rows, cols = normalise(resize(small, frame, frame, resample), proc.mean, proc.std)[None], 0, 0
    if (rows, cols, pixels.shape[0]) != (layout.rows, layout.cols, layout.num_frames):
        raise AssertionError(f"split_frames: pixels give {rows}x{cols} tiles / {pixels.shape[0]} frames, the layout "
                             f"{layout.rows}x{layout.cols} / {layout.num_frames}")
    return pixels, layout


def pack_split(features: torch.Tensor, layout: SplitLayout | None = None) -> torch.Tensor:
    """One image's connector output (num_frames, t, T) -> its `<image>` token features (num_frames * t, T).

    The order is the processor's prompt order, which is the frame order: tile (0, 0), (0, 1), ... row-major,
    then the global frame last; within a frame the connector's t tokens in their own (row-major) order. Row
    separators and `<row_r_col_c>` / `<global-img>` / `<fake_token_around_image>` are text tokens, not features.
    """
    if features.dim() != 3:
        raise ValueError(f"pack_split: expected (num_frames, t, T), got {tuple(features.shape)}")
    if layout is not None and tuple(features.shape[:2]) != (layout.num_frames, layout.tokens_per_frame):
        raise ValueError(f"pack_split: features {tuple(features.shape)} do not fit the layout "
                         f"({layout.num_frames} frames x {layout.tokens_per_frame} tokens)")
    return features.reshape(-1, features.shape[-1])


def pack_split_batch(features: torch.Tensor, layouts: Sequence[SplitLayout]) -> list[torch.Tensor]:
    """A batch's frames concatenated image by image (sum of num_frames, t, T) -> per image (num_tokens, T)."""
    counts = [lay.num_frames for lay in layouts]
    if features.dim() != 3 or features.shape[0] != sum(counts):
        raise ValueError(f"pack_split_batch: features {tuple(features.shape)} but the layouts have {sum(counts)} "
                         f"frames in all")
    return [pack_split(chunk, lay) for chunk, lay in zip(torch.split(features, counts), layouts, strict=True)]


def prompt_image_tokens(layout: SplitLayout) -> int:
    """`<image>` tokens the SmolVLM / Idefics3 processor writes for the image (always equals layout.num_tokens)."""
    if layout.rows == 0 and layout.cols == 0:  # `_prompt_single_image`: the global block only
        return layout.tokens_per_frame
    return layout.rows * layout.cols * layout.tokens_per_frame + layout.tokens_per_frame  # tiles, then global


__all__ = [
    "SMOLVLM_FRAME",
    "SMOLVLM_LONGEST_EDGE",
    "SMOLVLM_TOKENS_PER_FRAME",
    "SplitLayout",
    "frame_tokens",
    "pack_split",
    "pack_split_batch",
    "prompt_image_tokens",
    "split_frames",
    "split_layout",
]
