"""Visual question answering data with text answers: one sample type, one entry point for every source.

`VQASample(image, question, answer, qtype)` is what the VLM tasks (`task=align|finetune|eval`, vtlab.tasks)
consume; `vqa_dataset(data, split)` builds the `data.kind`'s set (`vqa`: the embedded synthetic generator;
`easy_vqa`: the pip package's images; `conversations`: a folder of images + LLaVA-style JSONL). A set also
says which words its answers and questions use (`vocabulary()`, for the offline tokenizer of random LMs),
which question types it has, and how many rows it skipped (bad rows are counted, never silently dropped).

INTERFACE STUB (session of 2026-12-01): the data half of issue 15 replaces the body below with the real
generators and loaders; the signatures stay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset


@dataclass(frozen=True)
class VQASample:
    """One question about one image (None: a text-only row, e.g. the blind baseline drops the image)."""

    image: Image.Image | None
    question: str
    answer: str
    qtype: str  # the question type (count | ocr | spatial | compare | a data set's own types)


class VQADataset(Dataset):
    """A split of a VQA set: items are `VQASample`s."""

    question_types: tuple[str, ...] = ()
    skipped: int = 0  # rows that could not be used (reported by the task, never silently)

    def vocabulary(self) -> list[str]:
        """Every whitespace-separated word of the questions and answers (the offline tokenizer's vocabulary)."""
        raise NotImplementedError


class _CountStub(VQADataset):
    """Placeholder: 'how many glyphs' on random dots (replaced by the real generator)."""

    question_types = ("count",)

    def __init__(self, length: int, image_size: int, seed: int, split: str) -> None:
        self.length, self.size, self.seed, self.split = length, image_size, seed, split

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> VQASample:
        rng = np.random.default_rng([self.seed, {"train": 0, "val": 1, "test": 2}[self.split], index])
        n = int(rng.integers(0, 4))
        img = np.zeros((self.size, self.size, 3), dtype=np.uint8)
        for _ in range(n):
            y, x = rng.integers(0, self.size - 6, size=2)
            img[y : y + 6, x : x + 6] = 255
        return VQASample(Image.fromarray(img), "how many squares are there ?", str(n), "count")

    def vocabulary(self) -> list[str]:
        return ["how", "many", "squares", "are", "there", "?", "0", "1", "2", "3"]


def vqa_dataset(data: Any, split: str) -> VQADataset:
    """The `split` ("train" | "val" | "test") of the VQA set `data` (a DataConfig) describes."""
    size = int(data.image_size or 64)
    length = int(data.train_size if split == "train" else data.val_size)
    return _CountStub(length, size, int(data.seed), split)
