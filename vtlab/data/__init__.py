"""Data for `task=train|eval`: the synthetic glyph-count set, image folders, SigLIP preprocessing, DataModule;
for the VQA tasks, sets with text answers (`vqa_dataset`, vtlab.data.vqa_sets).

The names are imported on first use (PEP 562), so that `vtlab.data.synthetic` (which the config schema reads)
does not pull Lightning and torchvision into a profile run that never trains.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {"DataError": "vtlab.errors", "VtlabDataModule": "vtlab.data.module", "GlyphCount": "vtlab.data.synthetic",
          "GlyphSpec": "vtlab.data.synthetic", "siglip_transform": "vtlab.data.transforms",
          "VQADataset": "vtlab.data.vqa", "VQASample": "vtlab.data.vqa", "check_answer_lengths": "vtlab.data.vqa",
          "vqa_dataset": "vtlab.data.vqa_sets"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'vtlab.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


__all__ = ["DataError", "GlyphCount", "GlyphSpec", "VQADataset", "VQASample", "VtlabDataModule", "check_answer_lengths",
           "siglip_transform", "vqa_dataset"]
