"""What an input image of a given size becomes: tower frames, tiles and visual tokens, per tiling scheme.

`Tiler` is the one entry point the tasks and the API use; it dispatches to the scheme of the model's family
(or `model.tiling`) and mirrors the transformers processors and models:
- `split` (SmolVLM / Idefics3, `vtlab.tiling.idefics3`): longest-edge resize, sides to multiples of the frame,
  row-major tiles plus a global frame last; tokens are the frames' tokens concatenated in that order.
- `anyres` (LlavaNext / Granite-Vision, `vtlab.tiling.anyres`): best resolution among the pinpoints, base
  frame first, then tiles; features packed with unpadding and an `image_newline` per row.
- `none` (SigLIP): one frame, the image resized to the tower input (for the idefics3 family exactly as the
  processor's `do_image_splitting=False`: longest-edge resize, then to the frame, LANCZOS).

`Tiler.plan(h, w)` is geometry only (cheap: token budgets of any image size), `Tiler.frames(image)` makes the
pixels, `Tiler.pack(features, plan, newline)` turns one image's (frames, t, T) connector output into its tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from vtlab.errors import ConfigError
from vtlab.preprocess import ImageLike, SiglipPreprocessor, to_uint8_hwc
from vtlab.tiling import anyres, idefics3

TILINGS = ("none", "split", "anyres")
FAMILY_TILING = {"siglip": "none", "idefics3": "split", "llava_next": "anyres"}


@dataclass(frozen=True)
class ImagePlan:
    """One image of `size` (H, W): `frames` tower inputs (`rows` x `cols` tiles plus a global/base frame when
    tiled) and `tokens` visual tokens for the language model after packing."""

    size: tuple[int, int]
    tiling: str
    rows: int
    cols: int
    frames: int
    tokens_per_frame: int
    tokens: int
    detail: dict[str, Any]

    @property
    def tiles(self) -> int:
        return self.rows * self.cols

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"tiles": self.tiles}

    def describe(self) -> str:
        h, w = self.size
        if self.tiling == "none" or self.frames == 1:
            return f"{h}x{w} -> 1 frame, {self.tokens} tokens"
        extra = "global" if self.tiling == "split" else "base"
        return (f"{h}x{w} -> {self.rows}x{self.cols} tiles + {extra} = {self.frames} frames, "
                f"{self.tokens} tokens ({self.tiling})")


def image_size_of(value: Any, key: str = "data.image_size") -> tuple[int, int] | None:
    """(H, W) from an int (square) or an [H, W] pair; None stays None. Anything else is a ConfigError."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is not an image size; give an int (square) or [H, W]")
    if isinstance(value, int):
        pair = (value, value)
    else:
        try:
            items = list(value)
        except TypeError:
            raise ConfigError(f"{key}={value!r} is not an image size; give an int (square) or [H, W]") from None
        if len(items) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            raise ConfigError(f"{key}={items} is not an image size; give an int (square) or [H, W], e.g. [1536,2048]")
        pair = (items[0], items[1])
    if min(pair) < 1:
        raise ConfigError(f"{key}={list(pair)} must be positive; give an int (square) or [H, W], e.g. [1536,2048]")
    return pair


def resolve_tiling(model: Any) -> str:
    """`model.tiling`, or the family's scheme when it is null; a ConfigError names the valid ones."""
    if model.tiling is None:
        return FAMILY_TILING[getattr(model.family, "value", model.family)]
    if model.tiling not in TILINGS:
        raise ConfigError(f"model.tiling={model.tiling!r} is unknown; valid: {', '.join(TILINGS)} (or null for the "
                          f"family's own)")
    return model.tiling


def default_pinpoints(frame: int) -> list[tuple[int, int]]:
    """Granite-Vision's pinpoints expressed in frames, scaled to `frame` (exactly Granite's at 384)."""
    base = anyres.GRANITE_PINPOINTS[0][0]
    return [(h // base * frame, w // base * frame) for h, w in anyres.GRANITE_PINPOINTS]


def check_tiling(model: Any, frame: int, grid: tuple[int, int]) -> None:
    """The cross-key rules of the tiling settings (called by config validation)."""
    tiling = resolve_tiling(model)
    if model.longest_edge is not None and model.longest_edge < frame:
        raise ConfigError(f"model.longest_edge={model.longest_edge} is smaller than one frame ({frame}px); "
                          f"use >= {frame} or null for 4 x {frame}")
    if model.pinpoints is not None:
        if not model.pinpoints:
            raise ConfigError("model.pinpoints=[] is empty; give [[H, W], ...] or null for Granite's list")
        for p in model.pinpoints:
            pair = list(p) if not isinstance(p, int) else [p]
            if len(pair) != 2 or any(not isinstance(v, int) or v < frame or v % frame for v in pair):
                raise ConfigError(f"model.pinpoints contains {pair}: each entry must be [H, W], both multiples of "
                                  f"the frame size {frame}px (e.g. [{frame}, {2 * frame}])")
    if tiling == "anyres" and grid[0] != grid[1]:
        raise ConfigError(f"model.tiling=anyres needs a square patch grid, got {grid[0]}x{grid[1]}")


class Tiler:
    """The tiling scheme of one built stack: geometry, pixels and packing (see the module docstring)."""

    def __init__(self, tiling: str, frame: int, tokens_per_frame: int, token_grid: int,
                 longest_edge: int | None = None, pinpoints: list[tuple[int, int]] | None = None,
                 family: str = "siglip") -> None:
        if tiling not in TILINGS:
            raise ConfigError(f"model.tiling={tiling!r} is unknown; valid: {', '.join(TILINGS)}")
        self.tiling = tiling
        self.frame = frame
        self.tokens_per_frame = tokens_per_frame
        self.token_grid = token_grid
        self.longest_edge = longest_edge or 4 * frame
        self.pinpoints = [tuple(p) for p in (pinpoints or default_pinpoints(frame))]
        self.family = family

    @classmethod
    def for_config(cls, cfg: Any) -> Tiler:
        """The tiler of a validated config (`model.tiling`, `longest_edge`, `pinpoints`, the patch grid and the
        connector factor); nothing is built, so token budgets of any image size cost microseconds."""
        from vtlab.config import patch_grid

        model = cfg.model
        gh, gw = patch_grid(model)
        f = cfg.connector.factor
        pinpoints = [tuple(p) for p in model.pinpoints] if model.pinpoints else None
        return cls(resolve_tiling(model), model.input_size or model.image_size, (gh // f) * (gw // f),
                   gh // f if gh == gw else 0, model.longest_edge, pinpoints,
                   getattr(model.family, "value", model.family))

    # ------------------------------------------------------------------ geometry
    def plan(self, height: int, width: int) -> ImagePlan:
        """Frames and tokens for an image of (height, width), without touching pixels."""
        size = (int(height), int(width))
        if self.tiling == "split":
            lay = idefics3.split_layout(*size, frame=self.frame, longest_edge=self.longest_edge,
                                        tokens_per_frame=self.tokens_per_frame)
            return ImagePlan(size, "split", lay.rows, lay.cols, lay.num_frames, self.tokens_per_frame,
                             lay.num_tokens, {"resized": list(lay.resized), "layout": lay})
        if self.tiling == "anyres":
            lay = anyres.anyres_layout(*size, pinpoints=self.pinpoints, crop=self.frame, grid=self.token_grid)
            return ImagePlan(size, "anyres", lay.rows, lay.cols, lay.num_frames, self.token_grid**2, lay.num_tokens,
                             {"best_resolution": list(lay.best_resolution), "unpadded": list(lay.unpadded),
                              "layout": lay})
        return ImagePlan(size, "none", 0, 0, 1, self.tokens_per_frame, self.tokens_per_frame,
                         {"resized": [self.frame, self.frame]})

    # ------------------------------------------------------------------ pixels
    def frames(self, image: ImageLike) -> tuple[torch.Tensor, ImagePlan]:
        """(frames, 3, S, S) float32 pixels as the transformers processor makes them, and the image's plan."""
        array = to_uint8_hwc(image)
        plan = self.plan(array.shape[0], array.shape[1])
        if self.tiling == "split":
            pixels, _ = idefics3.split_frames(array, frame=self.frame, longest_edge=self.longest_edge,
                                              tokens_per_frame=self.tokens_per_frame)
        elif self.tiling == "anyres":
            pixels, _ = anyres.anyres_frames(array, pinpoints=self.pinpoints, crop=self.frame)
        elif self.family == "idefics3":
            pixels, _ = idefics3.split_frames(array, frame=self.frame, longest_edge=self.longest_edge,
                                              tokens_per_frame=self.tokens_per_frame, do_splitting=False)
        else:
            pixels = SiglipPreprocessor(self.frame)(array)[None]
        if pixels.shape[0] != plan.frames:
            raise RuntimeError(f"tiling {self.tiling}: {pixels.shape[0]} frames made, {plan.frames} planned")
        return pixels, plan

    # ------------------------------------------------------------------ tokens
    def pack(self, features: torch.Tensor, plan: ImagePlan, newline: torch.Tensor | None = None) -> torch.Tensor:
        """One image's connector output (frames, t, T) -> its visual tokens (plan.tokens, T)."""
        if self.tiling == "anyres":
            if newline is None:
                raise ValueError("anyres packing needs the image_newline vector (stack.image_newline)")
            return anyres.pack_anyres(features, plan.detail["layout"], newline)
        return idefics3.pack_split(features)
