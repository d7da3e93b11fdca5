"""Connectors: tower features (B, patches, C) -> visual tokens (B, tokens, text_hidden).

`CONNECTORS` is the registry of connector kinds (`connector.kind`; the schema's enum is built from it). Each
entry is a `ConnectorKind`: its builder `(ConnectorConfig, in_dim, out_dim) -> module`, its `layout` and the
budgets it can make on a patch grid (`budgets(grid)`, None = any positive number):

- `unshuffle` (pixel_unshuffle, mlp, linear, identity; vtlab.models.connectors.projector): tokens =
  (gh/f)*(gw/f) for a factor f dividing the grid; token-wise after the unshuffle;
- `grid` (c_abstractor, ldp, avgpool): pool the row-major grid to s x s, s <= min(gh, gw);
- `set` (perceiver, qformer): learned queries read an unordered set of any size.

Every built module has `kind`, `factor` (1 unless it unshuffles), `out_dim`, `tokens_for(grid)` and
`flops_closed_form(grid)` (vtlab.models.connectors.zoo wraps the standalone zoo modules to this interface).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from vtlab.models.connectors import zoo
from vtlab.models.connectors.pixel_unshuffle import pixel_unshuffle, valid_factors
from vtlab.models.connectors.projector import KINDS as PROJECTOR_KINDS
from vtlab.models.connectors.projector import Connector, build_connector

LAYOUTS = ("unshuffle", "grid", "set")


@dataclass(frozen=True)
class ConnectorKind:
    """One `connector.kind`: how to build it and which budgets it can make."""

    build: Callable[[Any, int, int], nn.Module]
    layout: str  # one of LAYOUTS
    check: Callable[[Any], str | None] = lambda c: None  # the kind's own rule on its fields: a message, or None

    def __call__(self, connector_cfg: Any, in_dim: int, out_dim: int) -> nn.Module:
        return self.build(connector_cfg, in_dim, out_dim)

    def budgets(self, grid: tuple[int, int]) -> list[int] | None:
        """Tokens per frame this kind can make on a (rows, cols) grid; None = any positive number."""
        h, w = grid
        if self.layout == "unshuffle":
            return sorted({(h // f) * (w // f) for f in valid_factors(grid)})
        if self.layout == "grid":
            return [s * s for s in range(1, min(h, w) + 1)]
        return None

    @property
    def reads_sets(self) -> bool:
        """Whether the kind accepts an unordered, reduced token set (ToMe / pruning before it)."""
        return self.layout == "set"


CONNECTORS: dict[str, ConnectorKind] = {kind: ConnectorKind(build_connector, "unshuffle") for kind in PROJECTOR_KINDS}
CONNECTORS.update({kind: ConnectorKind(build, layout, check) for kind, (build, layout, check) in zoo.BUILDERS.items()})

__all__ = ["CONNECTORS", "Connector", "ConnectorKind", "build_connector", "pixel_unshuffle", "valid_factors"]
