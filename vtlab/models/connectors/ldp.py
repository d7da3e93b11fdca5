"""MobileVLM V2 LDPv2 connector: pointwise MLP, average pooling to s x s, depthwise-conv PEG with a residual.

Paper: Chu et al., "MobileVLM V2: Faster and Stronger Baseline for Vision Language Model" (2024), section 3
(LDPv2). Upstream: Meituan-AutoML/MobileVLM `mobilevlm/model/vision_projector.py`, `LDPNetV2Projector`
(`ldpnetv2`): `FeatureIRLayer` (Linear(C -> T), GELU(erf), Linear(T -> T)), `TokenDownLayer`
(AdaptiveAvgPool2d((12, 12)) on the square grid) and `PosInjectLayer` (PEG of Twins/CPVT: depthwise
Conv2d(T, T, 3, padding 1, bias) added to its input). Upstream names `mlp.mlp.{0,2}` and `peg.peg.0` are
`mlp.{0,2}` and `peg` here. The budget generalises the fixed 12 x 12 (144 tokens): `tokens` must be s*s.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LDPv2(nn.Module):
    """(B, h*w, in_dim) row-major grid -> (B, tokens, out_dim)."""

    needs_grid = True

    def __init__(self, in_dim: int, out_dim: int, tokens: int = 144) -> None:
        super().__init__()
        self.side = math.isqrt(tokens)
        if tokens < 1 or self.side**2 != tokens:
            raise ValueError(f"ldp: tokens={tokens} is not a positive perfect square")
        self.in_dim, self.out_dim, self.tokens = in_dim, out_dim, tokens
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        self.peg = nn.Conv2d(out_dim, out_dim, 3, padding=1, groups=out_dim, bias=True)

    @staticmethod
    def valid_tokens(grid: tuple[int, int]) -> list[int] | None:
        return [s * s for s in range(1, min(grid) + 1)]

    def pooled(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """MLP then average pooling: (B, N, in_dim) -> (B, out_dim, s, s), before the PEG."""
        b, n, _ = x.shape
        h, w = grid
        if h * w != n:
            raise ValueError(f"ldp: grid {h}x{w} does not hold {n} tokens")
        y = self.mlp(x).transpose(1, 2).reshape(b, self.out_dim, h, w)
        return F.adaptive_avg_pool2d(y, (self.side, self.side))

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        y = self.pooled(x, grid)
        return (self.peg(y) + y).flatten(2).transpose(1, 2)

    def flops_closed_form(self, n_in: int, grid: tuple[int, int]) -> int:
        """Matmul and conv FLOPs per image (2 per multiply-add); GELU, pooling, residual excluded."""
        c, t = self.in_dim, self.out_dim
        return 2 * n_in * (c * t + t * t) + 2 * self.tokens * t * 9

    @staticmethod
    def param_count(in_dim: int, out_dim: int) -> int:
        """MLP weights + biases, then the depthwise 3x3 PEG (weight + bias); independent of the budget."""
        return in_dim * out_dim + out_dim + out_dim * out_dim + out_dim + 9 * out_dim + out_dim
