"""`Reduction`: the token-reduction stage between the tower and the connector of a `VisionStack`.

Wires vtlab.models.reduction.tome (ToMe inside the tower blocks, `model.token_merging.r`) and
vtlab.models.reduction.prune (top-k after the tower, `connector.prune` / `connector.prune_tokens`) into one
object the stack asks for its tower output, the number of tokens the connector reads, and the tower's
closed-form FLOPs with merging. The connector then reads an unordered set, handed to it as a (1, n) grid;
vtlab.config.schema.resolve_budget admits only connector kinds that read sets (and token-wise unshuffle
kinds at factor 1).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vtlab.models.reduction.prune import prune_tokens
from vtlab.models.reduction.tome import tokens_after, tome_forward


class Reduction(nn.Module):
    """ToMe with `r` merges per block (0: the plain tower), then optional top-`keep` pruning by `score`."""

    def __init__(self, r: int = 0, score: str | None = None, keep: int | None = None) -> None:
        super().__init__()
        self.r, self.score, self.keep = r, score, keep

    def tower_forward(self, tower: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        x = tome_forward(tower, pixel_values, self.r)[0] if self.r else tower(pixel_values)
        if self.score is not None and self.keep is not None:
            x = prune_tokens(x, self.keep, self.score, probe=getattr(tower, "head", None)).tokens
        return x

    def merged(self, tower: Any, grid: tuple[int, int]) -> int:
        """Tokens leaving the tower blocks (after ToMe)."""
        return tokens_after(grid[0] * grid[1], self.r, len(tower.blocks))

    def tokens_in(self, tower: Any, grid: tuple[int, int]) -> int:
        """Tokens the connector reads for one frame of `grid`."""
        n = self.merged(tower, grid)
        return min(n, self.keep) if self.keep is not None else n

    def tower_flops_closed_form(self, tower: Any, grid: tuple[int, int]) -> int:
        """The tower's matmul FLOPs with ToMe: per block, attention on t tokens, the matching scores
        (2 * ceil(t/2) * floor(t/2) * head_dim), then the MLP on the merged t - min(r, t // 2) tokens; pruning
        by `attention` adds the MAP-head probe's scores over the n merged tokens: q 2D^2 (once per batch, so
        exact per image at batch 1), k 2nD^2, logits 2nD."""
        d = tower.hidden_size
        probe = 0
        if self.score == "attention":
            n = self.merged(tower, grid)
            probe = 2 * d * d + 2 * n * d * d + 2 * n * d
        return probe + self._tome_flops(tower, grid)

    def _tome_flops(self, tower: Any, grid: tuple[int, int]) -> int:
        if not self.r:
            return tower.flops_closed_form(*grid)
        d, t = tower.hidden_size, grid[0] * grid[1]
        f = tower.blocks[0].mlp.fc1.out_features
        hd = tower.blocks[0].attn.head_dim
        total = 2 * t * tower.patch_embed.in_channels * tower.patch_size**2 * d
        for _ in tower.blocks:
            total += 8 * t * d * d + 4 * t * t * d
            r = min(self.r, t // 2)
            if r > 0:
                total += 2 * ((t + 1) // 2) * (t // 2) * hd
            t -= r
            total += 4 * t * d * f
        return total

    def describe(self) -> str:
        parts = [f"ToMe r={self.r}"] if self.r else []
        if self.score is not None:
            parts.append(f"prune top-{self.keep} by {self.score}")
        return ", ".join(parts)
