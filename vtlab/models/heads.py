"""Task heads that read the connector's visual tokens (B, tokens, text_hidden) and return class logits.

`AttentionPoolHead`: LayerNorm, then one learned probe attends over all visual tokens at the text hidden size
(`vtlab.models.layers.AttentionPool`, the same module as SigLIP's MAP head), then LayerNorm and a linear
classifier. It sees every token the language model would get, so the visual-token budget set by the
connector is what limits it. `HEADS` is the registry `task.head` is checked against (the schema's enum).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vtlab.models.layers import AttentionPool


def pick_heads(dim: int, preferred: int = 8) -> int:
    """The largest head count <= `preferred` that divides `dim`."""
    return next(h for h in range(min(preferred, dim), 0, -1) if dim % h == 0)


class AttentionPoolHead(AttentionPool):
    def __init__(self, dim: int, num_classes: int, num_heads: int | None = None) -> None:
        super().__init__(dim, num_heads or pick_heads(dim), fused_in_proj=False, probe_std=dim**-0.5)
        self.norm_in = nn.LayerNorm(dim)
        self.norm_out = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, num_classes) logits."""
        return self.classifier(self.norm_out(super().forward(self.norm_in(tokens))))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for part in ("weight", "bias"):  # checkpoints written before the pooling was shared named it `out`
            old = f"{prefix}out.{part}"
            if old in state_dict and f"{prefix}out_proj.{part}" not in state_dict:
                state_dict[f"{prefix}out_proj.{part}"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


HEADS: dict[str, type[nn.Module]] = {"attention_pool": AttentionPoolHead}


def build_head(name: Any, dim: int, num_classes: int) -> nn.Module:
    return HEADS[str(getattr(name, "value", name))](dim, num_classes)
