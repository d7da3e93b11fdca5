"""The Idefics3 / SmolVLM family: its preprocessing and image splitting, its position rule, checkpoints and export.

Pixels and tiling mirror transformers v5:
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

Tower and checkpoints: the tower is SigLIP's (`Idefics3VisionTransformer`), but a frame size other than the native
one picks position rows by bucketing fractional patch coordinates (`Idefics3VisionEmbeddings`, position_rule
`bucket`), never by interpolation. Checkpoints: `Idefics3ForConditionalGeneration` / SmolVLM hub names
(`model.vision_model.*`, `model.connector.modality_projection.proj.weight`; a bare `Idefics3Model` drops `model.`),
config.json `Idefics3Config` (`vision_config`, `scale_factor`, `text_config`); the text model is ignored.

Upstream's own geometry-only helper
`get_number_of_image_patches` is NOT mirrored: it ceils the pre-rounding short side, which disagrees with the
pixels it produces when the frame does not divide `longest_edge` (never at SmolVLM's 512 / 2048).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from vtlab.errors import CheckpointError
from vtlab.families.base import Layout, register_family
from vtlab.families.pixels import ImageLike, normalise, resize, to_uint8_hwc
from vtlab.families.siglip import SiglipTowerFamily, hf_vision_config, text_config_stub, text_fields, tower_fields
from vtlab.families.tiler import ImagePlan, Tiler, TilingScheme, register_tiling

SMOLVLM_FRAME = 512  # max_image_size.longest_edge of the SmolVLM / SmolVLM2 preprocessor configs
SMOLVLM_LONGEST_EDGE = 2048  # size.longest_edge
SMOLVLM_TOKENS_PER_FRAME = 64  # image_seq_len: (512 / 16)^2 / 4^2
MAX_IMAGE_SIZE = 4096  # Idefics3 upper bound on any side after the longest-edge resize


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

    keeps_size = True  # __call__ returns the unsplit image at its own size (a multiple of the frame)

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


class SplitTiling(TilingScheme):
    """`model.tiling=split`: the processor's tiles row-major plus a global frame; tokens concatenated in that order."""

    name = "split"

    def plan(self, tiler: Tiler, height: int, width: int) -> ImagePlan:
        lay = split_layout(height, width, frame=tiler.frame, longest_edge=tiler.longest_edge,
                           tokens_per_frame=tiler.tokens_per_frame)
        return ImagePlan((height, width), self.name, lay.rows, lay.cols, lay.num_frames, tiler.tokens_per_frame,
                         lay.num_tokens, {"resized": list(lay.resized), "layout": lay})

    def frames(self, tiler: Tiler, array: Any) -> torch.Tensor:
        return split_frames(array, frame=tiler.frame, longest_edge=tiler.longest_edge,
                            tokens_per_frame=tiler.tokens_per_frame)[0]

    def pack(self, tiler: Tiler, features: torch.Tensor, plan: ImagePlan, newline: torch.Tensor | None) -> torch.Tensor:
        return pack_split(features)

    def packing(self) -> str:
        return "frame tokens concatenated: tiles row-major, global frame last"


class Idefics3Family(SiglipTowerFamily):
    name = "idefics3"
    tiling = "split"
    position_rule = "bucket"
    model_types = ("idefics3", "smolvlm")
    hub_prefix = "model.vision_model."
    resample = Image.Resampling.LANCZOS
    # transformers' Idefics3VisionConfig defaults, for fields a config.json omits
    vision_defaults = dict(hidden_size=1152, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=16,
                           num_channels=3, image_size=224, patch_size=32, hidden_act="gelu_pytorch_tanh",
                           layer_norm_eps=1e-6)

    lm_prefixes = (("model.text_model.", "model."), ("text_model.", "model."), ("lm_head.", "lm_head."))
    lm_hub = ("model.text_model.", "lm_head.")
    image_token_key = "image_token_id"
    fake_token = "<fake_token_around_image>"
    global_token = "<global-img>"

    def special_tokens(self, plan: Any) -> tuple[str, ...]:
        rows = tuple(f"<row_{r + 1}_col_{c + 1}>" for r in range(plan.rows) for c in range(plan.cols))
        return (self.image_token, self.fake_token, self.global_token, *rows)

    def image_prompt(self, plan: Any) -> str:
        """`Idefics3Processor` / `SmolVLMProcessor`'s expansion: per tile `<fake><row_r_col_c>` + t x `<image>`
        (a newline after each tile row), then `\\n<fake><global-img>` + t x `<image>` + `<fake>`; unsplit: only
        the global block."""
        t, fake = plan.tokens_per_frame, self.fake_token
        block = self.global_token + self.image_token * t + fake
        if plan.rows == 0:
            return fake + block
        rows = "".join("".join(f"{fake}<row_{r + 1}_col_{c + 1}>" + self.image_token * t for c in range(plan.cols)) + "\n"
                       for r in range(plan.rows))
        return rows + "\n" + fake + block

    def single_frame(self, array: np.ndarray, frame: int, longest_edge: int) -> torch.Tensor:
        """`do_image_splitting=False`: the longest-edge resize, then straight to frame x frame (LANCZOS)."""
        return split_frames(array, frame=frame, longest_edge=longest_edge, tokens_per_frame=1, do_splitting=False)[0]

    def processor(self, size: int, longest_edge: int | None = None) -> Idefics3Preprocessor:
        return Idefics3Preprocessor(size, longest_edge, self.mean, self.std, self.resample)

    def detect(self, keys: list[str], keyset: set[str], hf_prefix: str | None) -> Layout | None:
        if hf_prefix == "vision_model." and "connector.modality_projection.proj.weight" in keyset:
            return Layout("idefics3 (Idefics3Model)", self.name, "hf", hf_prefix, "connector.", carries_connector=True)
        if hf_prefix == "model.vision_model.":
            return Layout("Idefics3 / SmolVLM (model.vision_model.*)", self.name, "hf", hf_prefix, "model.connector.",
                          carries_connector=True)
        return None

    def connector_key_to_native(self, rel: str) -> str | None:
        return "connector.proj.weight" if rel == "modality_projection.proj.weight" else None

    def connector_native_to_hf(self, name: str) -> str | None:
        return "model.connector.modality_projection.proj.weight" if name == "connector.proj.weight" else None

    def read_hf_config(self, conf: dict[str, Any], where: str) -> dict[str, Any]:
        out: dict[str, Any] = {"model.family": self.name, "connector.kind": "pixel_unshuffle",
                               "connector.factor": int(conf.get("scale_factor", 2)), "connector.bias": False,
                               "model.use_head": False, "model.feature_layers": None}
        out.update(tower_fields(conf.get("vision_config") or {}, self.vision_defaults, where))
        out.update(text_fields(conf.get("text_config")))
        return out

    def shape_fields(self, native: dict[str, tuple[int, ...]], width: int) -> dict[str, Any]:
        if "connector.proj.weight" not in native:
            return {}
        t, packed = native["connector.proj.weight"]
        return {"text_hidden": t, "connector.factor": math.isqrt(packed // width)}

    def hf_defaults(self, arch: dict[str, Any]) -> dict[str, Any]:
        return {"connector.kind": "pixel_unshuffle", "connector.bias": False}

    def hf_config(self, cfg: Any, stack: torch.nn.Module, extra: dict[str, Any]) -> dict[str, Any]:
        m, c = cfg.model, cfg.connector
        kind = getattr(c.kind, "value", c.kind)
        if kind != "pixel_unshuffle" or m.use_head or m.feature_layers is not None:
            raise CheckpointError(
                f"export: Idefics3 holds a pixel-unshuffle connector (bias-free Linear), no MAP head and no feature "
                f"taps; this stack has connector.kind={kind}, use_head={m.use_head}, feature_layers={m.feature_layers}"
            )
        return {"architectures": ["Idefics3ForConditionalGeneration"], "model_type": "idefics3",
                "scale_factor": c.factor, "vision_config": hf_vision_config(m, "idefics3_vision"),
                "text_config": text_config_stub(cfg.text, stack.connector.out_dim)}


SPLIT = register_tiling(SplitTiling())
IDEFICS3 = register_family(Idefics3Family())

__all__ = [
    "IDEFICS3",
    "SMOLVLM_FRAME",
    "Idefics3Preprocessor",
    "encoder_multiple_size",
    "longest_edge_size",
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
