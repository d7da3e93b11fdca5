"""The unshuffle-then-project connector kinds (`pixel_unshuffle`, `mlp`, `linear`, `identity`) in one module.

- `pixel_unshuffle`: Idefics3/SmolVLM `modality_projection.proj` = Linear(s^2*C -> T, bias=False).
- `mlp`: LLaVA `mlp{depth}x_gelu` / LlavaNext `multi_modal_projector` = linear_1 -> GELU(erf) -> linear_2
  (depth 2, biases on), with the hidden width defaulting to T.
- `linear`: one Linear(s^2*C -> T) with bias; `identity`: no projection (output width s^2*C).
Every kind honours `factor` (unshuffle first), so a token budget can be swept for any projector.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vtlab.models.connectors.pixel_unshuffle import pixel_unshuffle
from vtlab.models.layers import activation

KINDS = ("pixel_unshuffle", "mlp", "linear", "identity")


class Connector(nn.Module):
    def __init__(
        self,
        kind: str,
        in_dim: int,
        out_dim: int,
        factor: int = 1,
        hidden: int | None = None,
        depth: int = 2,
        bias: bool = True,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        self.kind = kind
        self.factor = factor
        self.in_dim = in_dim
        packed = in_dim * factor * factor
        self.proj: nn.Module | None = None
        self.layers = nn.ModuleDict()
        if kind == "pixel_unshuffle":
            self.proj = nn.Linear(packed, out_dim, bias=False)
        elif kind == "linear":
            self.proj = nn.Linear(packed, out_dim, bias=bias)
        elif kind == "mlp":
            width = hidden or out_dim
            dims = [packed] + [width] * (depth - 1) + [out_dim]
            for i in range(depth):
                self.layers[f"linear_{i + 1}"] = nn.Linear(dims[i], dims[i + 1], bias=bias)
            self.act = activation(act)
        elif kind == "identity":
            out_dim = packed
        else:
            raise ValueError(f"connector.kind={kind!r} is unknown; valid: pixel_unshuffle, mlp, linear, identity")
        self.out_dim = out_dim

    def tokens_for(self, grid: tuple[int, int]) -> int:
        """Tokens per frame for a (rows, cols) patch grid."""
        return (grid[0] // self.factor) * (grid[1] // self.factor)

    def flops_closed_form(self, grid: tuple[int, int]) -> int:
        """Forward FLOPs per frame: 2 * tokens * (sum of Linear in * out) after the unshuffle."""
        tokens = self.tokens_for(grid)
        return sum(2 * tokens * m.in_features * m.out_features for m in self.modules() if isinstance(m, nn.Linear))

    def unshuffle(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return pixel_unshuffle(x, grid, self.factor)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is not None:
            return self.proj(x)
        layers = list(self.layers.values())
        for i, layer in enumerate(layers):
            x = layer(x)
            if i < len(layers) - 1:
                x = self.act(x)
        return x

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.project(self.unshuffle(x, grid))


def build_connector(connector_cfg: Any, in_dim: int, out_dim: int) -> Connector:
    """Build from a `ConnectorConfig`; `in_dim` is the tower feature width, `out_dim` the text hidden size."""
    value = lambda v: getattr(v, "value", v)  # noqa: E731  (Enum or plain string)
    return Connector(
        kind=value(connector_cfg.kind),
        in_dim=in_dim,
        out_dim=out_dim,
        factor=connector_cfg.factor or 1,
        hidden=connector_cfg.hidden_size,
        depth=connector_cfg.depth,
        bias=connector_cfg.bias,
        act=value(connector_cfg.act),
    )
