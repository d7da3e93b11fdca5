"""Connectors: pixel unshuffle (any factor dividing the grid) followed by a projector to the text width."""

from vtlab.connectors.connector import Connector, build_connector
from vtlab.connectors.pixel_unshuffle import pixel_unshuffle

__all__ = ["Connector", "build_connector", "pixel_unshuffle"]
