"""Post-tower token pruning: keep the top-k visual tokens by an importance score, optionally merging the rest.

Scores: `"norm"`, the feature L2 norm; `"attention"`, the attention of one probe query over the tokens,
softmax(q k^T / sqrt(head_dim)) averaged over heads, with the probe either a learned `AttentionProbe` or
the tower's SigLIP MAP head (`vtlab.models.layers.MAPHead`: its `probe` and the q/k rows of `in_proj`). This is
the CLS/probe-attention selection of FasterVLM / VisionZip-style pruning; with `merge=True` every pruned token
is folded into its most similar kept token (cosine similarity of the features), size-weighted, in the spirit
of LLaVA-PruMerge (Shang et al., 2024, arXiv 2403.15388; upstream 42Shawn/LLaVA-PruMerge, which selects by IQR
outliers of CLS attention and merges by key k-NN: here the budget k is fixed and the merge is one-nearest).
Kept tokens stay in their original order.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

PRUNE_SCORES = ("norm", "attention")  # the importance scores of `token_scores`


class AttentionProbe(nn.Module):
    """A learned query over the tokens: `probe` (1, 1, D), `in_proj` rows [W_q; W_k] (MAP-head layout)."""

    def __init__(self, dim: int, num_heads: int = 1) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"probe: dim={dim} is not a multiple of num_heads={num_heads}")
        self.num_heads = num_heads
        self.probe = nn.Parameter(torch.randn(1, 1, dim) * dim**-0.5)
        self.in_proj = nn.Linear(dim, 2 * dim)


def probe_attention(x: torch.Tensor, probe: nn.Module) -> torch.Tensor:
    """(B, N, D) -> (B, N): the probe's attention over the tokens, averaged over heads (rows sum to 1)."""
    b, n, d = x.shape
    h = probe.num_heads
    w, bias = probe.in_proj.weight, probe.in_proj.bias
    q = F.linear(probe.probe.reshape(1, 1, d), w[:d], None if bias is None else bias[:d]).view(1, h, 1, d // h)
    k = F.linear(x, w[d : 2 * d], None if bias is None else bias[d : 2 * d]).view(b, n, h, d // h).transpose(1, 2)
    logits = (q @ k.transpose(-1, -2)) * (d // h) ** -0.5  # (B, h, 1, N)
    return logits.softmax(dim=-1).mean(dim=1)[:, 0]


def token_scores(x: torch.Tensor, score: str = "norm", probe: nn.Module | None = None) -> torch.Tensor:
    """Importance of every token, (B, N)."""
    if score == "norm":
        return x.norm(dim=-1)
    if score == "attention":
        if probe is None:
            raise ValueError('score="attention" needs a probe (AttentionProbe or a MAPHead)')
        return probe_attention(x, probe)
    raise ValueError(f"score={score!r} is unknown; valid: norm, attention")


class Pruned(NamedTuple):
    tokens: torch.Tensor  # (B, k, D), original order
    index: torch.Tensor  # (B, k) positions of the kept tokens in the input, increasing
    size: torch.Tensor  # (B, k, 1) input tokens represented by each kept token (1 without merge)


def prune_tokens(
    x: torch.Tensor,
    k: int,
    score: str = "norm",
    probe: nn.Module | None = None,
    merge: bool = False,
    size: torch.Tensor | None = None,
) -> Pruned:
    """Keep the k highest-scoring tokens of x (B, N, D); with `merge`, size-weighted merge the others in."""
    b, n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"prune: k={k} must lie in [1, {n}]")
    with torch.no_grad():
        s = token_scores(x, score, probe)
        order = s.argsort(dim=-1, descending=True)
        keep = order[:, :k].sort(dim=-1).values
    size = torch.ones_like(x[..., :1]) if size is None else size
    kept = x.gather(1, keep[..., None].expand(b, k, d))
    kept_size = size.gather(1, keep[..., None])
    if not merge or k == n:
        return Pruned(kept, keep, kept_size)
    drop = order[:, k:]
    dropped = x.gather(1, drop[..., None].expand(b, n - k, d))
    dropped_size = size.gather(1, drop[..., None])
    with torch.no_grad():
        sim = F.normalize(dropped, dim=-1) @ F.normalize(kept, dim=-1).transpose(1, 2)
        dst = sim.argmax(dim=-1)[..., None]  # (B, n - k, 1) most similar kept token
    total = (kept * kept_size).scatter_add(1, dst.expand(b, n - k, d), dropped * dropped_size)
    new_size = kept_size.scatter_add(1, dst, dropped_size)
    return Pruned(total / new_size, keep, new_size)
