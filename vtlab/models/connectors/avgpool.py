"""Average-pooling connector: 2-D pooling of the token grid to s x s, then an MLP projector.

The "average pooling" baseline of MM1 (McKinley et al., 2024, section 3.2) and Honeybee's ablations.
`mode="avg"` uses `adaptive_avg_pool2d`; `mode="bilinear"` uses `F.interpolate(..., mode="bilinear",
align_corners=False)` as LLaVA-OneVision pools video frames (transformers
`models/llava_onevision/modeling_llava_onevision.py`, `LlavaOnevisionModel.apply_pooling`, with
ceil(h/2) x ceil(w/2)). The projector is LLaVA's `mlp2x_gelu` (Linear -> GELU(erf) -> Linear, biases);
by default pooling runs first (cheaper), `pool_first=False` projects first as LLaVA-OneVision does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

POOL_MODES = ("avg", "bilinear")


class AvgPoolConnector(nn.Module):
    """(B, h*w, in_dim) row-major grid -> (B, tokens, out_dim); `tokens` must be s*s."""

    needs_grid = True

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        tokens: int = 144,
        *,
        mode: str = "avg",
        hidden: int | None = None,
        pool_first: bool = True,
    ) -> None:
        super().__init__()
        if mode not in POOL_MODES:
            raise ValueError(f"avgpool: mode={mode!r} is unknown; valid: avg, bilinear")
        self.side = math.isqrt(tokens)
        if tokens < 1 or self.side**2 != tokens:
            raise ValueError(f"avgpool: tokens={tokens} is not a positive perfect square")
        self.in_dim, self.out_dim, self.tokens, self.mode, self.pool_first = in_dim, out_dim, tokens, mode, pool_first
        self.hidden = hidden or out_dim
        self.mlp = nn.Sequential(nn.Linear(in_dim, self.hidden), nn.GELU(), nn.Linear(self.hidden, out_dim))

    @staticmethod
    def valid_tokens(grid: tuple[int, int]) -> list[int] | None:
        return [s * s for s in range(1, min(grid) + 1)]

    def pool(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, h*w, C) -> (B, s*s, C) in row-major order."""
        b, n, c = x.shape
        h, w = grid
        if h * w != n:
            raise ValueError(f"avgpool: grid {h}x{w} does not hold {n} tokens")
        y = x.transpose(1, 2).reshape(b, c, h, w)
        size = (self.side, self.side)
        if self.mode == "avg":
            y = F.adaptive_avg_pool2d(y, size)
        else:
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if self.pool_first:
            return self.mlp(self.pool(x, grid))
        return self.pool(self.mlp(x), grid)

    def flops_closed_form(self, n_in: int, grid: tuple[int, int]) -> int:
        """MLP matmul FLOPs per image (2 per multiply-add); pooling and GELU excluded."""
        rows = self.tokens if self.pool_first else n_in
        return 2 * rows * (self.in_dim * self.hidden + self.hidden * self.out_dim)
