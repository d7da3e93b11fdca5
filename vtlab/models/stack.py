"""`VisionStack`: tower -> feature taps -> connector -> visual tokens (B, tokens, text_hidden).

Built whole by its constructor: the tower, the connector, the tiler of its family (how an image of any size
becomes frames and how their tokens are packed) and the packing buffers (LlavaNext's `image_newline`).
`vtlab.api.build_stack(cfg)` assembles these from a validated config. It also does the shape and token
bookkeeping that the profile and bench tasks report: `stages()` names every stage (image, patch grid, tower,
connector) so callers look rows up by name, never by position.

Images of any size (`encode_images`) go through the stack's `tiler`: every frame of every image is stacked
into ONE tower batch, run once, split back per image and packed into that image's tokens, as the
transformers VLMs do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from torch import nn


class Tiler(Protocol):
    """What the stack needs of a tiler (vtlab.families.tiler.Tiler)."""

    tiling: str

    def plan(self, height: int, width: int) -> Any: ...
    def frames(self, image: Any) -> tuple[torch.Tensor, Any]: ...
    def pack(self, features: torch.Tensor, plan: Any, newline: torch.Tensor | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class Stage:
    """One row of the per-stage table: what leaves that stage for a batch of one image."""

    name: str
    shape: tuple[int, ...]
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


class Stages(tuple):
    """The stage rows in order; `stages["tower"]` looks a row up by its name (an int index still works)."""

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            for stage in self:
                if stage.name == key:
                    return stage
            raise KeyError(f"no stage {key!r}; stages: {[s.name for s in self]}")
        return super().__getitem__(key)


class VisionStack(nn.Module):
    def __init__(self, tower: nn.Module, connector: nn.Module, tiler: Tiler | None = None,
                 newline: torch.Tensor | None = None, input_size: int | None = None,
                 reduction: nn.Module | None = None) -> None:
        """`tiler`: how images of any size become frames (None: only square frames via forward()); `newline`:
        the (text_hidden,) row separator of anyres packing, kept as a persistent buffer `image_newline`;
        `reduction`: token merging / pruning between tower and connector (vtlab.models.reduction.stage)."""
        super().__init__()
        self.reduction = reduction
        self.tower = tower
        self.connector = connector
        self.input_size = input_size or tower.image_size
        self.tiler = tiler
        self.register_buffer("image_newline", newline)  # None: no buffer in state_dict()
        self.frozen_tower_dtype: torch.dtype | None = None  # freeze_tower_in

    def freeze_tower_in(self, dtype: torch.dtype) -> VisionStack:
        """Cast the tower to `dtype` and run it, whenever forward() does not train it, outside autocast in that
        dtype (`task.frozen_tower_bf16`): a frozen tower needs no fp32 master weights, and its no-grad forward
        then takes the inference fast paths (the residual stream runs only outside autocast). The features enter
        the connector as they are under autocast, else in the connector's dtype."""
        if self.reduction is not None:
            raise ValueError("freeze_tower_in: the token reduction runs inside the tower and keeps its own dtype")
        self.tower.to(dtype)
        self.frozen_tower_dtype = dtype
        return self

    # ------------------------------------------------------------------ bookkeeping
    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols) for the configured input size, e.g. (27, 27) for 384/14."""
        return self.tower.grid_for(self.input_size, self.input_size)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def connector_grid_for(self, grid: tuple[int, int]) -> tuple[int, int]:
        """The grid the connector reads: the patch grid, or (1, n) for the unordered set left by a reduction."""
        return grid if self.reduction is None else (1, self.reduction.tokens_in(self.tower, grid))

    @property
    def connector_grid(self) -> tuple[int, int]:
        return self.connector_grid_for(self.grid)

    @property
    def prefix_tokens(self) -> int:
        """Tokens the tower output carries before the patch grid (a kept CLS / registers; 0 for most towers)."""
        return int(getattr(self.tower, "prefix_tokens", 0))

    @property
    def num_tokens(self) -> int:
        """Visual tokens handed to the language model per frame: the connector's budget on this grid, plus the
        prefix tokens (a kept CLS / registers) a token-wise connector maps one to one."""
        return self.connector.tokens_for(self.connector_grid) + self.prefix_tokens

    def tower_flops_closed_form(self, grid: tuple[int, int] | None = None) -> int:
        """The tower's closed-form FLOPs per frame of `grid` (default: the stack's), with the reduction's merging."""
        grid = grid or self.grid
        if self.reduction is None:
            return self.tower.flops_closed_form(*grid)
        return self.reduction.tower_flops_closed_form(self.tower, grid)

    @property
    def feature_dim(self) -> int:
        return self.tower.feature_dim

    @property
    def text_hidden(self) -> int:
        return self.connector.out_dim

    def input_shape(self, batch: int = 1, plan: Any = None) -> tuple[int, int, int, int]:
        """(batch, C, H, W) of the tower frames: square at the input size, or a plan's own frame size (naflex)."""
        h, w = (plan.detail.get("frame") if plan is not None else None) or (self.input_size, self.input_size)
        return (batch, self.num_channels, h, w)

    @property
    def num_channels(self) -> int:
        return int(getattr(self.tower, "num_channels", 0) or self.tower.patch_embed.in_channels)

    def stages(self) -> Stages:
        (h, w), p, f = self.grid, self.tower.patch_size, self.connector.factor
        used = h * p
        crop = "" if used == self.input_size else f" (uses {used}px, drops {self.input_size - used}px)"
        return Stages([
            Stage("image", self.input_shape(1), f"{self.input_size}x{self.input_size} RGB"),
            Stage("patch grid", (h, w), f"{h}x{w} patches of {p}px{crop}"),
            Stage("tower", (1, self.connector_grid[0] * self.connector_grid[1] + self.prefix_tokens, self.feature_dim),
                  self._tower_detail()),
            *self._part_stages(),
            Stage(
                "connector",
                (1, self.num_tokens, self.text_hidden),
                f"{self.connector.kind}{f', factor {f}' if hasattr(self.connector, 'unshuffle') else ''}: "
                f"{self.num_patches} -> {self.num_tokens} tokens",
            ),
        ])

    def _part_stages(self) -> list[Stage]:
        """One row per sub-tower of a fused tower (`tower.<name>`); none for a single tower."""
        parts = self.tower.parts() if hasattr(self.tower, "parts") else {}
        return [Stage(f"tower.{name}", (1, self.num_patches, part.tower.feature_dim),
                      f"{type(part.tower).__name__}: {part.tower.depth_used}/{part.tower.num_layers} blocks, "
                      f"width {part.tower.hidden_size}") for name, part in parts.items()]

    def _tower_detail(self) -> str:
        t = self.tower
        taps = "post-LN last layer" if t.feature_layers is None else f"taps {t.feature_layers} concatenated"
        if hasattr(t, "parts"):
            taps = f"{' + '.join(t.parts())} concatenated on channels"
        prefix = f", {self.prefix_tokens} prefix token(s) kept" if self.prefix_tokens else ""
        reduced = "" if self.reduction is None else f", {self.reduction.describe()}"
        return f"{t.depth_used}/{t.num_layers} blocks, width {t.hidden_size}, {taps}{prefix}{reduced}"

    # ------------------------------------------------------------------ forward
    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The tower output after the feature taps (and the reduction, if any): (B, tokens in, feature_dim)."""
        return self.tower(pixel_values) if self.reduction is None else self.reduction.tower_forward(self.tower, pixel_values)

    def project(self, features: torch.Tensor, pixel_shape: Sequence[int]) -> torch.Tensor:
        """Tower features of frames of `pixel_shape` (..., H, W) -> connector tokens (B, tokens, text_hidden)."""
        return self.connector(features, self.connector_grid_for(self.tower.grid_for(pixel_shape[-2], pixel_shape[-1])))

    def forward(self, pixel_values: torch.Tensor, train_tower: bool = True, train_connector: bool = True) -> torch.Tensor:
        """(B, C, H, W) -> (B, tokens, text_hidden). `train_tower` / `train_connector` False run that part without
        recording gradients (frozen parts under task=train), whatever the grad mode outside."""
        if train_tower and train_connector:
            return self.project(self.features(pixel_values), pixel_values.shape)
        if not train_tower and self.frozen_tower_dtype is not None:
            device = pixel_values.device.type
            autocast = torch.is_autocast_enabled(device)
            with torch.no_grad(), torch.autocast(device, enabled=False):
                feats = self.features(pixel_values.to(self.frozen_tower_dtype))
            if not autocast:
                feats = feats.to(next(self.connector.parameters(), feats).dtype)
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and train_tower):
                feats = self.features(pixel_values)
        with torch.set_grad_enabled(torch.is_grad_enabled() and train_connector):
            return self.project(feats, pixel_values.shape)

    # ------------------------------------------------------------------ images of any size
    def _tiler(self) -> Any:
        if self.tiler is None:
            raise RuntimeError("this stack has no tiler: build it with vtlab.build() / vtlab.build_stack(cfg)")
        return self.tiler

    def plan(self, height: int, width: int) -> Any:
        """Frames, tiles and tokens of an image of (height, width) under the stack's tiling (no pixels)."""
        return self._tiler().plan(height, width)

    def pack(self, tokens: torch.Tensor, plans: Sequence[Any]) -> list[torch.Tensor]:
        """Connector output of several images' frames (sum of plan.frames, t, T) split per image and packed:
        a list of (plan.tokens, text_hidden)."""
        tiler = self._tiler()
        counts = [p.frames for p in plans]
        if sum(counts) != tokens.shape[0]:
            raise ValueError(f"{tokens.shape[0]} frames given, the plans need {sum(counts)}")
        return [tiler.pack(chunk, plan, self.image_newline) for chunk, plan in zip(tokens.split(counts), plans, strict=True)]

    def encode_frames(self, frames: torch.Tensor, plans: Sequence[Any]) -> list[torch.Tensor]:
        """Frames of several images, concatenated (sum of plan.frames, C, S, S), through ONE tower + connector
        call, then split per image and packed: a list of (plan.tokens, text_hidden)."""
        return self.pack(self(frames), plans)

    def encode_images(self, images: Sequence[Any]) -> list[torch.Tensor]:
        """Images of any sizes (PIL, or uint8 CHW/HWC tensors or arrays) -> one (tokens_i, text_hidden) per image,
        with the transformers processor's tiles and the model's packing."""
        tiler = self._tiler()
        made = [tiler.frames(image) for image in images]
        like = next(self.parameters())
        if len({tuple(pixels.shape[1:]) for pixels, _ in made}) > 1:  # frames at each image's own size (naflex)
            return [self.encode_frames(pixels.to(device=like.device, dtype=like.dtype), [plan])[0] for pixels, plan in made]
        frames = torch.cat([pixels for pixels, _ in made]).to(device=like.device, dtype=like.dtype)
        return self.encode_frames(frames, [plan for _, plan in made])
