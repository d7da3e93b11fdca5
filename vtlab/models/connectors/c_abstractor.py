"""Honeybee C-Abstractor: RegNet bottleneck stage, adaptive average pooling to s x s, a second stage, MLP readout.

Paper: Cha et al., "Honeybee: Locality-enhanced Projector for Multimodal LLM" (CVPR 2024). Upstream:
kakaobrain/honeybee `honeybee/projectors.py`, `CAbstractor`: `net = Sequential(RegStage(depth, C, H),
AdaptiveAvgPool2d((s, s)), RegStage(depth, H, H))` with timm's `RegStage(stride=1, dilation=1,
act_layer=SiLU, norm_layer=LayerNorm2d)` and `readout = build_mlp(mlp_depth, H, T)` (Linear, then
(mlp_depth - 1) x [SiLU, Linear]); `pos_emb=True` adds a learned (1, N, C) table first.

Each block is timm's RegNet `Bottleneck` (bottle_ratio 1, group_size 1, se_ratio 0.25), re-written here:

    y = act(LN2d(conv1x1(x)))                  # conv1: C_in -> C_out, no bias
    y = act(LN2d(dwconv3x3(y)))                # conv2: groups = C_out (group_size 1)
    y = y * sigmoid(fc2(act(fc1(mean_hw(y)))))  # SE, reduction round(0.25 * C_in), biases
    y = LN2d(conv1x1(y))                       # conv3, no activation
    out = act(y + shortcut(x))                 # shortcut: identity, or LN2d(conv1x1(x)) when C_in != C_out

Module names follow timm (`net.0.b1.conv1.conv`, `.bn`, `.se.fc1`, ...), so a Honeybee `abstractor.*` state
dict loads with the `abstractor.` prefix stripped. `tokens` must be a perfect square s*s.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map. Inside timm's `ConvNormAct` a `LayerNorm2d` becomes
    `LayerNormAct2d` with its default eps 1e-5 (not LayerNorm2d's 1e-6): that is what Honeybee runs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNorm(nn.Module):
    """conv (no bias) -> LayerNorm2d -> optional activation (timm `ConvNormAct` names: conv, bn)."""

    def __init__(self, cin: int, cout: int, k: int, groups: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False)
        self.bn = LayerNorm2d(cout, eps=1e-5)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = nn.SiLU()
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, se_ratio: float = 0.25) -> None:
        super().__init__()
        self.conv1 = ConvNorm(cin, cout, 1)
        self.conv2 = ConvNorm(cout, cout, 3, groups=cout)
        self.se = SqueezeExcite(cout, int(round(cin * se_ratio))) if se_ratio else nn.Identity()
        self.conv3 = ConvNorm(cout, cout, 1, act=False)
        self.downsample = ConvNorm(cin, cout, 1, act=False) if cin != cout else nn.Identity()
        self.act3 = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.se(self.conv2(self.conv1(x))))
        return self.act3(y + self.downsample(x))


class RegStage(nn.Sequential):
    def __init__(self, depth: int, cin: int, cout: int, se_ratio: float = 0.25) -> None:
        super().__init__()
        for i in range(depth):
            self.add_module(f"b{i + 1}", Bottleneck(cin if i == 0 else cout, cout, se_ratio))


def _side(tokens: int) -> int:
    s = math.isqrt(tokens)
    if tokens < 1 or s * s != tokens:
        raise ValueError(f"c_abstractor: tokens={tokens} is not a positive perfect square")
    return s


class CAbstractor(nn.Module):
    """(B, h*w, in_dim) row-major grid -> (B, tokens, out_dim). Honeybee's reference: CLIP ViT-L/14 (C=1024),
    hidden 1024, depth 3, mlp_depth 2, tokens 144 or 256, pos_emb on (`input_tokens=576`)."""

    needs_grid = True

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        tokens: int = 144,
        *,
        hidden: int | None = None,
        depth: int = 3,
        mlp_depth: int = 2,
        se_ratio: float = 0.25,
        input_tokens: int | None = None,
    ) -> None:
        super().__init__()
        self.side = _side(tokens)
        self.in_dim, self.out_dim, self.tokens = in_dim, out_dim, tokens
        self.hidden = hidden or in_dim
        self.pos_emb = nn.Parameter(torch.randn(1, input_tokens, in_dim) * 0.02) if input_tokens else None
        self.net = nn.Sequential(
            RegStage(depth, in_dim, self.hidden, se_ratio),
            nn.AdaptiveAvgPool2d((self.side, self.side)),
            RegStage(depth, self.hidden, self.hidden, se_ratio),
        )
        layers: list[nn.Module] = [nn.Linear(self.hidden, out_dim)]
        for _ in range(1, mlp_depth):
            layers += [nn.SiLU(), nn.Linear(out_dim, out_dim)]
        self.readout = nn.Sequential(*layers)

    @staticmethod
    def valid_tokens(grid: tuple[int, int]) -> list[int] | None:
        return [s * s for s in range(1, min(grid) + 1)]

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        h, w = grid
        if h * w != n:
            raise ValueError(f"c_abstractor: grid {h}x{w} does not hold {n} tokens")
        if self.pos_emb is not None:
            x = x + self.pos_emb
        y = self.net(x.transpose(1, 2).reshape(b, c, h, w))
        return self.readout(y.flatten(2).transpose(1, 2))

    def flops_closed_form(self, n_in: int, grid: tuple[int, int]) -> int:
        """Conv and matmul FLOPs per image (2 per multiply-add); norms, SE gating, pooling excluded."""
        total = 0
        for stage, pixels in ((self.net[0], n_in), (self.net[2], self.tokens)):
            for blk in stage:
                cin, cout = blk.conv1.conv.in_channels, blk.conv1.conv.out_channels
                total += 2 * pixels * (cin * cout + 9 * cout + cout * cout)
                if isinstance(blk.se, SqueezeExcite):
                    total += 2 * 2 * cout * blk.se.fc1.out_channels
                if cin != cout:
                    total += 2 * pixels * cin * cout
        linears = [m for m in self.readout if isinstance(m, nn.Linear)]
        return total + sum(2 * self.tokens * m.in_features * m.out_features for m in linears)

    @staticmethod
    def param_count(
        in_dim: int,
        out_dim: int,
        hidden: int,
        depth: int,
        mlp_depth: int,
        se_ratio: float = 0.25,
        input_tokens: int = 0,
    ) -> int:
        """Closed-form parameter count (conv weights, LayerNorm2d affine, SE and readout biases)."""

        def block(cin: int, cout: int) -> int:
            se = int(round(cin * se_ratio))
            p = cin * cout + 2 * cout + 9 * cout + 2 * cout + cout * cout + 2 * cout  # conv1, conv2, conv3
            p += (cout * se + se + se * cout + cout) if se_ratio else 0
            return p + ((cin * cout + 2 * cout) if cin != cout else 0)

        stages = block(in_dim, hidden) + (2 * depth - 1) * block(hidden, hidden)
        readout = hidden * out_dim + out_dim + (mlp_depth - 1) * (out_dim * out_dim + out_dim)
        return stages + readout + input_tokens * in_dim
