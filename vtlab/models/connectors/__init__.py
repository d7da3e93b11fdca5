"""Connectors: tower features (B, patches, C) -> visual tokens (B, tokens, text_hidden).

`CONNECTORS` is the registry of connector kinds (`connector.kind`, the schema's enum is built from it): each kind
maps to the builder of its module. Today's kinds unshuffle by `connector.factor` and then project
(vtlab.models.connectors.projector).
"""

from collections.abc import Callable
from typing import Any

from torch import nn

from vtlab.models.connectors.pixel_unshuffle import pixel_unshuffle
from vtlab.models.connectors.projector import KINDS as PROJECTOR_KINDS
from vtlab.models.connectors.projector import Connector, build_connector

CONNECTORS: dict[str, Callable[[Any, int, int], nn.Module]] = {kind: build_connector for kind in PROJECTOR_KINDS}

__all__ = ["CONNECTORS", "Connector", "build_connector", "pixel_unshuffle"]
