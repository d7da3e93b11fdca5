"""ToMe token merging inside the tower: bipartite soft matching between attention and MLP of every block.

Paper: Bolya et al., "Token Merging: Your ViT But Faster" (ICLR 2023). Upstream: facebookresearch/ToMe
`tome/merge.py` (`bipartite_soft_matching`, `merge_wavg`) and `tome/patch/timm.py` (`ToMeBlock`,
`ToMeAttention`). Re-written for vtlab's fused-qkv `Block` (`vtlab/models/layers.py`):

- split the tokens alternately into A (even positions) and B (odd positions); score every A token by its
  best cosine similarity to a B token, using the keys averaged over heads as the metric;
- the r best-scoring A tokens are merged into their B partners (several A may join one B; A-A and B-B never
  merge), the others are kept; output order is [unmerged A (in score order), all of B];
- r is capped at half the current tokens per block (ToMe's `min(r, t // 2)`, no protected CLS token here);
- merging is a size-weighted mean and `size` (B, N, 1) counts the patches in each token; proportional
  attention adds log(size) of the keys to the attention logits (an additive SDPA mask).

With r = 0 everywhere nothing changes: `tome_forward` is then bit-identical to `VisionTower.forward`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import sdpa_kernel

from vtlab.models.sdpa import layer_kernels


@dataclass
class Matching:
    """Indices of one bipartite matching (A = even positions, B = odd positions of the input)."""

    unm_idx: torch.Tensor  # (B, na - r, 1) kept A tokens, indices into A
    src_idx: torch.Tensor  # (B, r, 1) merged A tokens, indices into A
    dst_idx: torch.Tensor  # (B, r, 1) their partners, indices into B

    @property
    def r(self) -> int:
        return self.src_idx.shape[1]

    def merge(self, x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
        """(B, t, C) -> (B, t - r, C): [unmerged A; B with the merged A reduced into it]."""
        a, b = x[:, ::2], x[:, 1::2]
        n, _, c = a.shape
        unm = a.gather(1, self.unm_idx.expand(n, -1, c))
        src = a.gather(1, self.src_idx.expand(n, -1, c))
        b = b.scatter_reduce(1, self.dst_idx.expand(n, -1, c), src, reduce=mode)
        return torch.cat([unm, b], dim=1)

    def unmerge(self, x: torch.Tensor) -> torch.Tensor:
        """(B, t - r, C) -> (B, t, C): every input position gets the value of the token it ended up in."""
        n_unm = self.unm_idx.shape[1]
        unm, b = x[:, :n_unm], x[:, n_unm:]
        n, nb, c = b.shape
        out = x.new_zeros(n, n_unm + self.r + nb, c)  # |A| = n_unm + r, |B| = nb
        out[:, 1::2] = b
        out.scatter_(1, (2 * self.unm_idx).expand(n, -1, c), unm)
        out.scatter_(1, (2 * self.src_idx).expand(n, -1, c), b.gather(1, self.dst_idx.expand(n, -1, c)))
        return out


def match(metric: torch.Tensor, r: int) -> Matching | None:
    """Bipartite soft matching on `metric` (B, t, d); None when nothing is merged (r capped at t // 2)."""
    t = metric.shape[1]
    r = min(r, t // 2)
    if r <= 0:
        return None
    with torch.no_grad():
        m = metric / metric.norm(dim=-1, keepdim=True)
        scores = m[:, ::2] @ m[:, 1::2].transpose(1, 2)  # (B, na, nb) cosine similarities
        best, partner = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True)[..., None]
        src_idx = order[:, :r]
        return Matching(unm_idx=order[:, r:], src_idx=src_idx, dst_idx=partner[..., None].gather(1, src_idx))


def _identity(x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    return x


def bipartite_soft_matching(
    metric: torch.Tensor, r: int
) -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    """(merge, unmerge) callables of ToMe's matching; both are the identity when r is capped to 0."""
    m = match(metric, r)
    return (_identity, _identity) if m is None else (m.merge, m.unmerge)


def merge_wavg(
    merge: Callable[..., torch.Tensor], x: torch.Tensor, size: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average merge: returns (merged x, merged size); size (B, t, 1) defaults to ones."""
    if size is None:
        size = torch.ones_like(x[..., :1])
    x = merge(x * size, mode="sum")
    size = merge(size, mode="sum")
    return x / size, size


def proportional_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: torch.Tensor | None
) -> torch.Tensor:
    """SDPA with log(size) of each key added to the logits (size None: plain attention)."""
    mask = None if size is None else size.log()[:, None, None, :, 0].to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def tome_block_forward(
    block: nn.Module, x: torch.Tensor, size: torch.Tensor | None, r: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One pre-LN `Block` with proportional attention and ToMe between attention and MLP."""
    attn = block.attn
    b, n, d = x.shape
    qkv = attn.qkv(block.norm1(x)).view(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    kernels = layer_kernels(attn.sdpa_backends, n, n, masked=size is not None)  # the tower's kernel pinning, if any
    with sdpa_kernel(kernels) if kernels else nullcontext():
        out = proportional_attention(q, k, v, size)
    x = x + attn.proj(out.transpose(1, 2).reshape(b, n, d))
    m = match(k.mean(1), r)
    if m is not None:
        x, size = merge_wavg(m.merge, x, size)
    return x + block.mlp(block.norm2(x)), size


def tome_forward(
    tower: nn.Module, pixel_values: torch.Tensor, r: int | Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """`VisionTower` (post-LN output, feature_layers=None) with ToMe: returns (tokens (B, t, D), size (B, t, 1)).

    `r` is merged per block, or a per-block schedule. Token order is ToMe's, not the patch grid's."""
    if getattr(tower, "feature_layers", None) is not None:
        raise ValueError("tome_forward needs a tower with feature_layers=None (post-LN last layer)")
    rs = [r] * len(tower.blocks) if isinstance(r, int) else list(r)
    if len(rs) != len(tower.blocks):
        raise ValueError(f"tome: {len(rs)} r values for {len(tower.blocks)} blocks")
    x = tower.embed(pixel_values)
    size = None
    for blk, r_i in zip(tower.blocks, rs, strict=True):
        x, size = tome_block_forward(blk, x, size, r_i)
    x = tower.post_norm(x)
    return x, torch.ones_like(x[..., :1]) if size is None else size


def tokens_after(n: int, r: int | Sequence[int], depth: int) -> int:
    """Tokens left after `depth` ToMe blocks (each merges min(r, t // 2))."""
    for r_i in [r] * depth if isinstance(r, int) else list(r)[:depth]:
        n -= min(r_i, n // 2)
    return n


class ToMeTower(nn.Module):
    """Wrap a `VisionTower`: forward(pixels) -> (tokens, size) with r merges per block."""

    def __init__(self, tower: nn.Module, r: int | Sequence[int]) -> None:
        super().__init__()
        self.tower, self.r = tower, r

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tome_forward(self.tower, pixel_values, self.r)
