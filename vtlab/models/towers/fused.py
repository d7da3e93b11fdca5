"""`FusedTower`: several towers on the same image, patch features concatenated on channels (Prismatic's
DINOv2 + SigLIP "dinosiglip", prismatic/models/backbones/vision/dinosiglip_vit.py).

Mirrors Prismatic's fused backbone: every sub-tower sees the same image with its own normalisation
(DINOv2: ImageNet mean / std, SigLIP: 0.5 / 0.5), and the patch features of all of them, which must lie on
the same patch grid, are concatenated per patch (channel order: the sub-towers in config order). The
input is the image rescaled to [0, 1] (no normalisation): each sub-tower normalises inside `forward`.
`parts()` names the sub-towers for the per-stage cost rows (`tower.<name>`); the closed-form FLOPs are the
sub-towers' sums. No host syncs, no value-dependent branches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalise(nn.Module):
    """(x - mean) / std per channel (non-persistent buffers: not part of any checkpoint)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class Part(nn.Module):
    """One sub-tower behind its normalisation: [0, 1] pixels -> its patch features."""

    def __init__(self, tower: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.norm = Normalise(mean, std)
        self.tower = tower

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tower(self.norm(x))


class FusedTower(nn.Module):
    def __init__(self, parts: dict[str, Part], image_size: int, patch_size: int) -> None:
        super().__init__()
        if len(parts) < 2:
            raise ValueError(f"a fused tower needs at least two towers, got {list(parts)}")
        self.parts_ = nn.ModuleDict(parts)
        self.image_size = image_size
        self.patch_size = patch_size
        towers = [p.tower for p in parts.values()]
        self.num_channels = int(getattr(towers[0], "num_channels", 0) or towers[0].patch_embed.in_channels)
        self.hidden_size = sum(t.feature_dim for t in towers)
        self.num_layers = max(t.num_layers for t in towers)
        self.feature_layers = None

    # ------------------------------------------------------------------ structure
    def parts(self) -> dict[str, nn.Module]:
        return dict(self.parts_.items())

    @property
    def depth_used(self) -> int:
        return max(p.tower.depth_used for p in self.parts_.values())

    @property
    def feature_dim(self) -> int:
        return self.hidden_size

    @property
    def prefix_tokens(self) -> int:
        return 0

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        return next(iter(self.parts_.values())).tower.grid_for(height, width)

    def inactive_modules(self) -> list[nn.Module]:
        return [m for p in self.parts_.values() for m in p.tower.inactive_modules()]

    def no_weight_decay(self) -> set[str]:
        return {f"parts_.{n}.tower.{k}" for n, p in self.parts_.items() for k in p.tower.no_weight_decay()}

    def flops_closed_form(self, grid_h: int, grid_w: int) -> int:
        return sum(p.tower.flops_closed_form(grid_h, grid_w) for p in self.parts_.values())

    # ------------------------------------------------------------------ forward
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, N, sum of the sub-towers' feature dims)."""
        return torch.cat([part(pixel_values) for part in self.parts_.values()], dim=-1)
