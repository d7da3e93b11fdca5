"""The connector zoo behind the stack's connector interface, and its builders from a `ConnectorConfig`.

The standalone modules (perceiver.py, qformer.py, c_abstractor.py, ldp.py, avgpool.py) mirror their papers'
upstream code and take `flops_closed_form(n_in, grid)`; the subclasses here add what `VisionStack` and the
cost tables ask of every connector (as projector.Connector has it): `kind`, `factor` (1: none of them
unshuffles), `out_dim`, `tokens_for(grid)` (the budget, independent of the grid) and
`flops_closed_form(grid)`. State-dict keys are the standalone modules' own (no wrapper prefix), so their
key maps (Idefics2, BLIP-2, Honeybee) apply unchanged to `stack.connector`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from vtlab.models.connectors.avgpool import AvgPoolConnector
from vtlab.models.connectors.c_abstractor import CAbstractor
from vtlab.models.connectors.ldp import LDPv2
from vtlab.models.connectors.perceiver import PerceiverResampler
from vtlab.models.connectors.qformer import QFormer


def _value(v: Any) -> Any:
    return getattr(v, "value", v)  # an Enum of the schema, or a plain string


class _Budgeted:
    """Mixin: the stack interface over a zoo module with a fixed `tokens` budget."""

    kind: str = ""
    factor: int = 1
    tokens: int

    def tokens_for(self, grid: tuple[int, int]) -> int:
        return self.tokens

    def flops_closed_form(self, grid: tuple[int, int]) -> int:  # type: ignore[override]
        return super().flops_closed_form(grid[0] * grid[1], grid)  # type: ignore[misc]


class Perceiver(_Budgeted, PerceiverResampler):
    kind = "perceiver"


class QFormerConnector(_Budgeted, QFormer):
    kind = "qformer"


class CAbstractorConnector(_Budgeted, CAbstractor):
    kind = "c_abstractor"


class LDPConnector(_Budgeted, LDPv2):
    kind = "ldp"


class AvgPool(_Budgeted, AvgPoolConnector):
    kind = "avgpool"


def build_perceiver(c: Any, in_dim: int, out_dim: int) -> nn.Module:
    """Idefics2 defaults: 16 heads of 96, 4 kv heads; `hidden_size` = the SwiGLU projection width (4 x T)."""
    return Perceiver(in_dim, out_dim, c.tokens, depth=c.depth, num_heads=c.num_heads or 16,
                     head_dim=c.head_dim or 96, num_kv_heads=c.num_kv_heads or 4, proj_hidden=c.hidden_size,
                     eps=c.norm_eps)


def build_qformer(c: Any, in_dim: int, out_dim: int) -> nn.Module:
    """BLIP-2 defaults: width 768, 12 heads, FFN 4 x width, cross-attention every 2nd layer."""
    hidden = c.hidden_size or 768
    return QFormerConnector(in_dim, out_dim, c.tokens, hidden=hidden, depth=c.depth, num_heads=c.num_heads or 12,
                            intermediate=4 * hidden)


def build_c_abstractor(c: Any, in_dim: int, out_dim: int) -> nn.Module:
    """Honeybee: `depth` bottlenecks per RegStage, hidden = `hidden_size` (default the tower width), MLP depth 2."""
    return CAbstractorConnector(in_dim, out_dim, c.tokens, hidden=c.hidden_size, depth=c.depth, mlp_depth=2)


def build_ldp(c: Any, in_dim: int, out_dim: int) -> nn.Module:
    return LDPConnector(in_dim, out_dim, c.tokens)


def build_avgpool(c: Any, in_dim: int, out_dim: int) -> nn.Module:
    return AvgPool(in_dim, out_dim, c.tokens, mode=_value(c.pool), hidden=c.hidden_size)


def check_perceiver(c: Any) -> str | None:
    """The problem of a perceiver config (one line naming the keys), or None."""
    heads, kv = c.num_heads or 16, c.num_kv_heads or 4
    if heads % kv:
        return (f"connector.num_heads={heads} is not a multiple of connector.num_kv_heads={kv} (perceiver GQA); "
                f"valid num_kv_heads: {[g for g in range(1, heads + 1) if heads % g == 0]}")
    return None


def check_qformer(c: Any) -> str | None:
    hidden, heads = c.hidden_size or 768, c.num_heads or 12
    if hidden % heads:
        return (f"connector.hidden_size={hidden} is not divisible by connector.num_heads={heads} (qformer); "
                f"valid num_heads: {[h for h in range(1, hidden + 1) if hidden % h == 0]}")
    return None


def _no_check(c: Any) -> str | None:
    return None


# kind -> (builder, layout, check): see vtlab.models.connectors.CONNECTORS
BUILDERS: dict[str, tuple[Callable[[Any, int, int], nn.Module], str, Callable[[Any], str | None]]] = {
    "perceiver": (build_perceiver, "set", check_perceiver),
    "qformer": (build_qformer, "set", check_qformer),
    "c_abstractor": (build_c_abstractor, "grid", _no_check),
    "ldp": (build_ldp, "grid", _no_check),
    "avgpool": (build_avgpool, "grid", _no_check),
}
