"""How an image of any size becomes tower frames and visual tokens: `Tiler` and the tiling-scheme registry.

`Tiler` is the one entry point the stack, the tasks and the API use. It asks the scheme named by
`model.tiling` (null: the family's own) in `TILINGS`, where each family module registers the scheme it owns
and mirrors from its transformers processor and model:
- `split` (vtlab.families.idefics3: SmolVLM / Idefics3): row-major tiles plus a global frame last;
- `anyres` (vtlab.families.llava_next: LlavaNext / Granite-Vision): base frame first, then tiles; features
  packed with unpadding and an `image_newline` per row;
- `none` (here): one frame, the image made into one tower frame by its family (`Family.single_frame`).

`Tiler.plan(h, w)` is geometry only (cheap: token budgets of any image size), `Tiler.frames(image)` makes the
pixels, `Tiler.pack(features, plan, newline)` turns one image's (frames, t, T) connector output into its tokens.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vtlab.errors import ConfigError
from vtlab.families.base import Family, ImagePlan, get_family  # noqa: F401  (ImagePlan re-exported)
from vtlab.families.pixels import ImageLike, to_uint8_hwc
from vtlab.models.connectors.pixel_unshuffle import valid_factors  # noqa: F401  (re-exported with the grid)


def patch_grid(model: Any) -> tuple[int, int]:
    """(rows, cols) of the patch grid: floor(input / patch), e.g. 384/14 -> 27x27 (the last 6 px are unused)."""
    size = model.input_size or model.image_size
    return size // model.patch_size, size // model.patch_size


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


class TilingScheme:
    """One way of turning an image into frames and their features into tokens (subclassed by the families)."""

    name: str = "none"
    needs_newline: bool = False  # packing needs the stack's `image_newline` buffer

    def plan(self, tiler: Tiler, height: int, width: int) -> ImagePlan:
        return ImagePlan((height, width), self.name, 0, 0, 1, tiler.tokens_per_frame, tiler.tokens_per_frame,
                         {"resized": [tiler.frame, tiler.frame]})

    def frames(self, tiler: Tiler, array: Any) -> torch.Tensor:
        return tiler.family.single_frame(array, tiler.frame, tiler.longest_edge)

    def pack(self, tiler: Tiler, features: torch.Tensor, plan: ImagePlan, newline: torch.Tensor | None) -> torch.Tensor:
        """One image's (frames, t, T) -> (frames * t, T): the frames' tokens concatenated in frame order."""
        return features.reshape(-1, features.shape[-1])

    def check(self, model: Any, frame: int, grid: tuple[int, int]) -> None:
        """Cross-key rules of this scheme's settings (ConfigError)."""

    def packing(self) -> str:
        """How the tokens of one image are laid out (the `packed` row of the profile table)."""
        return "one frame"


TILINGS: dict[str, TilingScheme] = {"none": TilingScheme()}


def register_tiling(scheme: TilingScheme) -> TilingScheme:
    TILINGS[scheme.name] = scheme
    return scheme


def resolve_tiling(model: Any) -> str:
    """`model.tiling`, or the family's scheme when it is null; a ConfigError names the valid ones."""
    if model.tiling is None:
        return get_family(model.family).tiling
    if model.tiling not in TILINGS:
        raise ConfigError(f"model.tiling={model.tiling!r} is unknown; valid: {', '.join(TILINGS)} (or null for the "
                          f"family's own)")
    return model.tiling


def check_tiling(model: Any, frame: int, grid: tuple[int, int]) -> None:
    """The cross-key rules of the tiling settings (called by config validation)."""
    tiling = resolve_tiling(model)
    if model.longest_edge is not None and model.longest_edge < frame:
        raise ConfigError(f"model.longest_edge={model.longest_edge} is smaller than one frame ({frame}px); "
                          f"use >= {frame} or null for 4 x {frame}")
    for scheme in TILINGS.values():  # every scheme checks its own keys, used or not
        scheme.check(model, frame, grid)
    if TILINGS[tiling].needs_newline and grid[0] != grid[1]:
        raise ConfigError(f"model.tiling={tiling} needs a square patch grid, got {grid[0]}x{grid[1]}")


class Tiler:
    """The tiling scheme of one built stack: geometry, pixels and packing (see the module docstring)."""

    def __init__(self, tiling: str, frame: int, tokens_per_frame: int, token_grid: int,
                 longest_edge: int | None = None, pinpoints: list[tuple[int, int]] | None = None,
                 family: Family | str = "siglip", patch_size: int = 1, max_num_patches: int | None = None, factor: int = 1) -> None:
        """`patch_size` / `max_num_patches`: the patch budget of schemes that size frames per image (naflex;
        null: the frame's own patch count)."""
        if tiling not in TILINGS:
            raise ConfigError(f"model.tiling={tiling!r} is unknown; valid: {', '.join(TILINGS)}")
        self.tiling = tiling
        self.scheme = TILINGS[tiling]
        self.frame = frame
        self.tokens_per_frame = tokens_per_frame
        self.token_grid = token_grid
        self.longest_edge = longest_edge or 4 * frame
        self.family = family if isinstance(family, Family) else get_family(family)
        self.pinpoints = [tuple(p) for p in pinpoints] if pinpoints else None
        self.patch_size = patch_size
        self.factor = factor
        self.max_num_patches = max_num_patches or (frame // patch_size) ** 2
        self.scheme_defaults()

    def scheme_defaults(self) -> None:
        for scheme in TILINGS.values():
            setup = getattr(scheme, "setup", None)
            if setup is not None:
                setup(self)

    @classmethod
    def for_config(cls, cfg: Any) -> Tiler:
        """The tiler of a validated config (`model.tiling`, `longest_edge`, `pinpoints`, the patch grid and the
        connector's tokens per frame); nothing is built, so token budgets of any image size cost microseconds."""
        model = cfg.model
        gh, gw = patch_grid(model)
        tokens = cfg.connector.tokens  # resolved by validation (vtlab.config.schema.resolve_budget)
        side = math.isqrt(tokens)
        pinpoints = [tuple(p) for p in model.pinpoints] if model.pinpoints else None
        factor = cfg.connector.factor or 1  # null for kinds that do not unshuffle (the budget is `tokens`)
        return cls(resolve_tiling(model), model.input_size or model.image_size, tokens,
                   side if gh == gw and side * side == tokens else 0, model.longest_edge, pinpoints,
                   get_family(model.family), model.patch_size, model.max_num_patches, factor)

    @property
    def needs_newline(self) -> bool:
        return self.scheme.needs_newline

    def plan(self, height: int, width: int) -> ImagePlan:
        """Frames and tokens for an image of (height, width), without touching pixels."""
        return self.scheme.plan(self, int(height), int(width))

    def frames(self, image: ImageLike) -> tuple[torch.Tensor, ImagePlan]:
        """(frames, 3, S, S) float32 pixels as the transformers processor makes them, and the image's plan."""
        array = to_uint8_hwc(image)
        plan = self.plan(array.shape[0], array.shape[1])
        pixels = self.scheme.frames(self, array)
        if pixels.shape[0] != plan.frames:  # (naflex frames have the image's own size: stack.encode_images)
            raise RuntimeError(f"tiling {self.tiling}: {pixels.shape[0]} frames made, {plan.frames} planned")
        return pixels, plan

    def pack(self, features: torch.Tensor, plan: ImagePlan, newline: torch.Tensor | None = None) -> torch.Tensor:
        """One image's connector output (frames, t, T) -> its visual tokens (plan.tokens, T)."""
        if self.scheme.needs_newline and newline is None:
            raise ValueError(f"{self.tiling} packing needs the image_newline vector (stack.image_newline)")
        return self.scheme.pack(self, features, plan, newline)
