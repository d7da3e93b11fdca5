"""`PixelTower`: the pixel-probe control, no tower at all: each frame's raw patches go straight to the connector.

What experiments/training/pixel_probe.py does for the classifier, as a tower the stack can hold
(`model.tower_kind=pixels`): the frame (already normalised by the family's preprocessing) is cut into the
model's `patch_size` patches in row-major order, each flattened channel-last (p, p, C) into one
`C * p * p`-wide token. Nothing here has parameters, so every signal the LM receives passes through the
connector alone: if a VLM with a tower does no better than this, the tower did not help.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vtlab.models.towers.common import patchify


class PixelTower(nn.Module):
    """(B, C, H, W) -> (B, (H/p) * (W/p), C * p * p) raw patches; the tower interface of vtlab.models.towers."""

    def __init__(self, image_size: int, patch_size: int, num_channels: int = 3) -> None:
        super().__init__()
        self.image_size, self.patch_size, self.num_channels = image_size, patch_size, num_channels
        self.hidden_size = num_channels * patch_size * patch_size
        self.num_layers = 0
        self.depth_used = 0
        self.feature_layers = None
        self.native_grid = image_size // patch_size

    @property
    def feature_dim(self) -> int:
        return self.hidden_size

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size, width // self.patch_size

    def inactive_modules(self) -> list[nn.Module]:
        return []

    def no_weight_decay(self) -> set[str]:
        return set()

    def flops_closed_form(self, grid_h: int, grid_w: int) -> int:
        return 0  # a reshape

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return patchify(pixel_values, self.patch_size)


def build_pixel_tower(model_cfg: Any) -> PixelTower:
    return PixelTower(model_cfg.input_size or model_cfg.image_size, model_cfg.patch_size, model_cfg.num_channels)
