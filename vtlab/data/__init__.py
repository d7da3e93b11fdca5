"""Data for `task=train|eval`: the synthetic glyph-count set, image folders, SigLIP preprocessing, DataModule;
for the VQA tasks, sets with text answers (vtlab.data.vqa: `vqa_dataset`)."""

from vtlab.data.folders import DataError
from vtlab.data.module import VtlabDataModule
from vtlab.data.synthetic import GlyphCount, GlyphSpec
from vtlab.data.transforms import siglip_transform
from vtlab.data.vqa import VQADataset, VQASample, check_answer_lengths
from vtlab.data.vqa_sets import vqa_dataset

__all__ = ["DataError", "GlyphCount", "GlyphSpec", "VQADataset", "VQASample", "VtlabDataModule", "check_answer_lengths",
           "siglip_transform", "vqa_dataset"]
