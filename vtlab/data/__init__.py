"""Data for `task=train|eval`: the synthetic glyph-count set, image folders, SigLIP preprocessing, DataModule."""

from vtlab.data.folders import DataError
from vtlab.data.module import VtlabDataModule
from vtlab.data.synthetic import GlyphCount, GlyphSpec
from vtlab.data.transforms import siglip_transform

__all__ = ["DataError", "GlyphCount", "GlyphSpec", "VtlabDataModule", "siglip_transform"]
