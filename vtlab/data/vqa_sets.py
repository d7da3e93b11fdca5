"""`vqa_dataset(data, split)`: the one entry point that builds a set with text answers from `data.kind`.

The sets live one per module (vtlab.data.vqa_synthetic, vtlab.data.easyvqa, vtlab.data.conversations) on the
shared types of vtlab.data.vqa (`VQASample`, `VQADataset`); this module only picks one by kind, so the base
types need not import the sets that build on them.
"""

from __future__ import annotations

from typing import Any

from vtlab.data.conversations import Conversations
from vtlab.data.easyvqa import EasyVQA
from vtlab.data.vqa import SPLITS, VQADataset
from vtlab.data.vqa_synthetic import SyntheticVQA, spec_from_config
from vtlab.errors import ConfigError


def vqa_dataset(data: Any, split: str, image_size: int | None = None) -> VQADataset:
    """The `split` ("train" | "val" | "test") of the VQA set `data` (a DataConfig) describes.

    `image_size`: the render size of the synthetic set when `data.image_size` is null (pass the tower's input
    size; without either, 128 px). Problems are ConfigError (a setting, a missing file) or DataError (no usable
    row); skipped rows are reported on stderr once, here."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; valid: {', '.join(SPLITS)}")
    kind = str(getattr(data.kind, "value", data.kind))
    if kind == "vqa":
        length = data.train_size if split == "train" else data.val_size
        return SyntheticVQA(spec_from_config(data, image_size), length, split, int(data.seed))
    if kind == "easy_vqa":
        return EasyVQA.from_config(data, split)
    if kind == "conversations":
        return Conversations.from_config(data, split)
    raise ConfigError(f"data.kind={kind} has no text answers; the VQA tasks need data.kind=vqa, easy_vqa or "
                      f"conversations (data=vqa, data=easy_vqa, data=conversations)")
