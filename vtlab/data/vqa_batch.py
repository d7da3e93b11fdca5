"""Batches of `VQASample`s for the VLM tasks (align, finetune, eval): the family's frames, the prompt, the labels.

Mirrors LLaVA's `preprocess` + `DataCollatorForSupervisedDataset` (llava/train/train.py): the prompt is the
family's image layout plus the question through the chat template (`VisionLanguageModel.prompt_text`), the
target is the answer's tokens followed by eos, and only those carry labels (every prompt and padding position
is -100, the ignore index of the LM's cross-entropy); rows are right-padded with the tokenizer's pad id
(attention mask 0). The images become frames through the stack's tiler, i.e. the family's processor (Idefics3
split, LlavaNext anyres, one frame), concatenated over the batch with one plan per image. The blind control
(`blind=True`) builds the prompt without images and sends no pixels.

`fitting_rows` reads a split once and keeps the rows whose prompt + answer fit the LM's context (the rest
are counted, never silently dropped); `answer_stats` is the per-type chance level (one over the distinct
answers) and majority level of a split; `normalise_answer` is the exact-match normalisation of task=eval.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import Dataset, Subset

from vtlab.data.module import make_loader
from vtlab.data.vqa import VQASample

IGNORE = -100  # the label of every position that is not an answer token


def normalise_answer(text: str) -> str:
    """Lowercase, punctuation removed, whitespace collapsed (VQA-style exact match)."""
    text = text.lower().translate(str.maketrans({c: " " for c in string.punctuation}))
    return re.sub(r"\s+", " ", text).strip()


class VQACollator:
    """list[VQASample] -> {input_ids, attention_mask, labels (B, L), pixel_values, plans, prompts, answers, ...}."""

    def __init__(self, vlm: Any, blind: bool = False) -> None:
        self.tiler, self.tokenizer, self.prompt_text = vlm.stack.tiler, vlm.tokenizer, vlm.prompt_text
        self.check_tokenizer = vlm.check_tokenizer
        self.blind = blind
        self.eos = self.tokenizer.eos_token_id
        self._prompts: dict[tuple[str, str], list[int]] = {}
        pad = self.tokenizer.pad_token_id
        self.pad = self.eos if pad is None else pad

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def prompt_ids(self, plan: Any, question: str) -> list[int]:
        """The chat-templated prompt's ids for an image of `plan` (None: no image) and `question`; cached, as a
        set repeats its questions and plans (the Jinja template and the tokenizer cost ~1 ms a sample)."""
        key = (repr(plan), question)
        ids = self._prompts.get(key)
        if ids is None:
            ids = self._prompts[key] = self.ids(self.prompt_text([] if plan is None else [plan], question))
        return ids

    def encode(self, sample: VQASample, plan: Any) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids + eos) of one sample whose image has `plan` (None: no image)."""
        return self.prompt_ids(plan, sample.question), self.ids(" " + sample.answer.strip()) + [self.eos]

    def length_of(self, question: str, answer: str, hw: tuple[int, int] | None) -> int:
        """Tokens of prompt + answer + eos for an image of size `hw` (None: no image), without any pixels."""
        plan = None if self.blind or hw is None else self.tiler.plan(*hw)
        return len(self.prompt_ids(plan, question)) + len(self.ids(" " + answer.strip())) + 1

    def length(self, sample: VQASample) -> int:
        """Tokens of the sample's prompt + answer + eos (its image planned, not rendered into frames)."""
        hw = None if sample.image is None else (sample.image.height, sample.image.width)
        return self.length_of(sample.question, sample.answer, hw)

    def __call__(self, samples: Sequence[VQASample]) -> dict[str, Any]:
        frames, plans, prompts, answers = [], [], [], []
        for s in samples:
            plan = None
            if not self.blind and s.image is not None:
                pixels, plan = self.tiler.frames(s.image)
                frames.append(pixels)
                plans.append(plan)
            prompt, answer = self.encode(s, plan)
            prompts.append(prompt)
            answers.append(answer)
        longest = max(len(p) + len(a) for p, a in zip(prompts, answers, strict=True))
        b = len(samples)
        input_ids = torch.full((b, longest), self.pad, dtype=torch.long)
        labels = torch.full((b, longest), IGNORE, dtype=torch.long)
        mask = torch.zeros((b, longest), dtype=torch.long)
        for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
            n = len(p) + len(a)
            input_ids[i, :n] = torch.tensor(p + a)
            labels[i, len(p) : n] = torch.tensor(a)
            mask[i, :n] = 1
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "prompts": prompts,
                                 "questions": [s.question for s in samples], "answers": [s.answer for s in samples],
                                 "qtypes": [s.qtype for s in samples], "plans": plans or None}
        batch["pixel_values"] = torch.cat(frames) if frames else None
        return batch


def batch_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A batch's tensors on `device`; plans (frozen dataclasses, which Lightning refuses to traverse) and strings
    as they are."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def left_padded(prompts: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as one left-padded (B, L) batch for generation, with its attention mask."""
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p) :] = torch.tensor(list(p))
        mask[i, longest - len(p) :] = 1
    return ids, mask


@dataclass
class Rows:
    """The usable rows of one split: their indices, the rows the data set skipped, those too long for the LM."""

    dataset: Dataset
    indices: list[int]
    skipped: int
    too_long: int
    answers: dict[str, Counter] = field(default_factory=dict)  # qtype -> answer counts (normalised)

    def subset(self) -> Dataset:
        return self.dataset if len(self.indices) == len(self.dataset) else Subset(self.dataset, self.indices)


def fitting_rows(dataset: Any, collator: VQACollator, context: int) -> Rows:
    """Read every row's text once: keep those whose prompt + answer + eos fit `context` tokens (the rest are
    counted); images are only sized (`VQADataset.image_hw`), not rendered."""
    keep, too_long, answers = [], 0, {}
    for i in range(len(dataset)):
        if hasattr(dataset, "text"):  # a VQADataset: the text and the image's size, no pixels rendered or decoded
            question, answer, qtype, _ = dataset.text(i)
            n = collator.length_of(question, answer, dataset.image_hw(i))
        else:
            sample = dataset[i]
            question, answer, qtype = sample.question, sample.answer, sample.qtype
            n = collator.length(sample)
        if n > context:
            too_long += 1
            continue
        keep.append(i)
        answers.setdefault(qtype, Counter())[normalise_answer(answer)] += 1
    return Rows(dataset, keep, int(getattr(dataset, "skipped", 0)), too_long, answers)


def answer_stats(answers: dict[str, Counter]) -> dict[str, dict[str, float]]:
    """Per question type: chance (1 / distinct answers), majority (share of the most common answer), rows."""
    out = {}
    for qtype, counts in sorted(answers.items()):
        total = sum(counts.values())
        out[qtype] = {"chance": 1.0 / len(counts), "majority": max(counts.values()) / total, "rows": total}
    return out


class VQADataModule(pl.LightningDataModule):
    """Train and val splits of a VQA set, batched by a `VQACollator`, with vtlab's resumable train sampler."""

    def __init__(self, train: Rows | None, val: Rows, collator: VQACollator, batch_size: int,
                 eval_batch_size: int | None, workers: int, seed: int) -> None:
        super().__init__()
        self.train_rows, self.val_rows, self.collator = train, val, collator
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.workers, self.seed = workers, seed
        self.val_set = val.subset()

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch_to(batch, device)

    def train_dataloader(self) -> Any:
        assert self.train_rows is not None
        return make_loader(self.train_rows.subset(), self.batch_size, True, self.workers, self.seed, self.collator)

    def val_dataloader(self) -> Any:
        return make_loader(self.val_set, self.eval_batch_size, False, self.workers, self.seed, self.collator)
