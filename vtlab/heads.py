"""Task heads that read the connector's visual tokens (B, tokens, text_hidden) and return class logits.

`AttentionPoolHead`: one learned probe attends over all visual tokens at the text hidden size (a MAP head,
as SigLIP pools its own tokens), then LayerNorm and a linear classifier. It sees every token the language
model would get, so the visual-token budget set by the connector factor is what limits it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pick_heads(dim: int, preferred: int = 8) -> int:
    """The largest head count <= `preferred` that divides `dim`."""
    return next(h for h in range(min(preferred, dim), 0, -1) if dim % h == 0)


class AttentionPoolHead(nn.Module):
    def __init__(self, dim: int, num_classes: int, num_heads: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads or pick_heads(dim)
        self.norm_in = nn.LayerNorm(dim)
        self.probe = nn.Parameter(torch.randn(1, 1, dim) * dim**-0.5)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm_out = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, num_classes) logits."""
        b, n, d = tokens.shape
        h, hd = self.num_heads, d // self.num_heads
        x = self.norm_in(tokens)
        q = self.q(self.probe).expand(b, 1, d).view(b, 1, h, hd).transpose(1, 2)
        kv = self.kv(x).view(b, n, 2, h, hd).permute(2, 0, 3, 1, 4)
        pooled = F.scaled_dot_product_attention(q, kv[0], kv[1]).transpose(1, 2).reshape(b, d)
        return self.classifier(self.norm_out(self.out(pooled)))


HEADS = {"attention_pool": AttentionPoolHead}


def build_head(name: str, dim: int, num_classes: int) -> nn.Module:
    if name not in HEADS:
        from vtlab.errors import ConfigError

        raise ConfigError(f"task.head={name!r} is unknown; valid: {', '.join(HEADS)}")
    return HEADS[name](dim, num_classes)
