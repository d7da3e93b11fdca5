"""Visual question answering data with text answers: one sample type, one entry point for every source.

`VQASample(image, question, answer, qtype)` is what the VLM tasks (`task=align|finetune|eval`, vtlab.tasks)
consume; `vtlab.data.vqa_sets.vqa_dataset(data, split)` builds the `data.kind`'s set:
- `vqa`: the embedded synthetic generator (vtlab.data.vqa_synthetic: count, ocr, spatial, compare);
- `easy_vqa`: the easy-vqa pip package's images and questions (vtlab.data.easyvqa);
- `conversations`: a folder of images + LLaVA-style JSONL (vtlab.data.conversations).
A set also says which words its questions and answers use (`vocabulary()`, for the offline tokenizer of
random LMs: `offline_tokenizer(vocab_size, extra_words=ds.vocabulary())`), which question types it has, what
each type's answers are and the accuracy of the best answer that ignores the image (`answer_set`, `chance`:
the level a blind baseline should sit at), and how many rows it skipped and why (`skipped`, `skip_reasons`:
bad rows are counted and reported, never silently dropped). `check_answer_lengths` drops (counted) the samples
whose prompt and answer would not fit the LM's context. Words are split as the offline tokenizer's
pre-tokenizer splits them (`words`: runs of letters/digits, runs of punctuation), lowercased.
"""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from vtlab.errors import DataError
from vtlab.logs import process_rank

SPLITS = {"train": 0, "val": 1, "test": 2}
_WORD = re.compile(r"\w+|[^\w\s]+")  # tokenizers' Whitespace pre-tokenizer: \w+|[^\w\s]+


def words(text: str) -> list[str]:
    """The lowercase words of `text` as the offline tokenizer splits them ("Is it red?" -> is it red ?)."""
    return _WORD.findall(text.lower())


def normalize_text(text: str) -> str:
    """`text` as its words joined by single spaces (what exact-match accuracy compares)."""
    return " ".join(words(text))


@dataclass(frozen=True)
class VQASample:
    """One question about one image (None: a text-only row, e.g. the blind baseline drops the image)."""

    image: Image.Image | None
    question: str
    answer: str
    qtype: str  # the question type (count | ocr | spatial | compare | a data set's own types)
    id: str = ""  # where it comes from, for predictions.jsonl: "val/17", "<row id>/<turn>", "easy_vqa/val/q123"


class VQADataset(Dataset):
    """A split of a VQA set: items are `VQASample`s.

    Subclasses set `name`, `question_types` and implement `__len__`, `text(i)` (question, answer, qtype, id,
    without opening the image), `image(i)` and `vocabulary()`; `answer_set` / `chance` default to what this
    split's answers show (the per-question majority answer), the synthetic set overrides them with exact values.
    """

    name: str = "vqa"
    question_types: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.skipped = 0  # rows that could not be used (reported on stderr when the set is built)
        self.skip_reasons: dict[str, int] = {}  # reason -> rows skipped for it
        self._prior: dict[str, Any] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def text(self, index: int) -> tuple[str, str, str, str]:
        """(question, answer, qtype, id) of sample `index`, without rendering or opening its image."""
        raise NotImplementedError

    def image(self, index: int) -> Image.Image:
        raise NotImplementedError

    def image_hw(self, index: int) -> tuple[int, int] | None:
        """(H, W) of sample `index`'s image (None: none); sets that know it without decoding override this."""
        image = self.image(index)
        return None if image is None else (image.height, image.width)

    def __getitem__(self, index: int) -> VQASample:
        if not 0 <= index < len(self):
            raise IndexError(index)
        question, answer, qtype, sid = self.text(index)
        return VQASample(self.image(index), question, answer, qtype, sid)

    def vocabulary(self) -> list[str]:
        """Every word of the questions and answers (the offline tokenizer's vocabulary), sorted."""
        raise NotImplementedError

    def _answer_prior(self) -> dict[str, Any]:
        """Per type: the answers seen and the share a blind guesser gets right by answering each question
        with its most frequent answer in this split."""
        if self._prior is None:
            answers: dict[str, set[str]] = defaultdict(set)
            by_question: dict[tuple[str, str], Counter] = defaultdict(Counter)
            totals: Counter = Counter()
            for i in range(len(self)):
                question, answer, qtype, _ = self.text(i)
                answers[qtype].add(normalize_text(answer))
                by_question[qtype, normalize_text(question)][normalize_text(answer)] += 1
                totals[qtype] += 1
            best: Counter = Counter()
            for (qtype, _), counts in by_question.items():
                best[qtype] += max(counts.values())
            self._prior = {"answers": {t: tuple(sorted(a)) for t, a in answers.items()},
                           "chance": {t: best[t] / totals[t] for t in totals}}
        return self._prior

    def answer_set(self, qtype: str) -> tuple[str, ...] | None:
        """The answers questions of `qtype` can have (None: an open set, e.g. OCR strings)."""
        self._check_type(qtype)
        return self._answer_prior()["answers"].get(qtype, ())

    def chance(self, qtype: str) -> float:
        """Exact-match accuracy of the best answer that ignores the image, for questions of `qtype`."""
        self._check_type(qtype)
        return float(self._answer_prior()["chance"].get(qtype, 0.0))

    def _check_type(self, qtype: str) -> None:
        if qtype not in self.question_types:
            raise KeyError(f"{self.name} has no question type {qtype!r}; it has {', '.join(self.question_types)}")


class VQASubset(VQADataset):
    """The samples of `base` at `indices`, with `extra` skipped samples (reason -> count) added to its counts."""

    def __init__(self, base: VQADataset, indices: Sequence[int], extra: dict[str, int]) -> None:
        super().__init__()
        self.base, self.indices = base, list(indices)
        self.name, self.question_types = base.name, base.question_types
        self.skip_reasons = dict(base.skip_reasons)
        for reason, n in extra.items():
            self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + n
        self.skipped = base.skipped + sum(extra.values())

    def __len__(self) -> int:
        return len(self.indices)

    def text(self, index: int) -> tuple[str, str, str, str]:
        return self.base.text(self.indices[index])

    def image(self, index: int) -> Image.Image:
        return self.base.image(self.indices[index])

    def image_hw(self, index: int) -> tuple[int, int] | None:
        return self.base.image_hw(self.indices[index])

    def vocabulary(self) -> list[str]:
        return self.base.vocabulary()

    def answer_set(self, qtype: str) -> tuple[str, ...] | None:
        return self.base.answer_set(qtype)

    def chance(self, qtype: str) -> float:
        return self.base.chance(qtype)


# ------------------------------------------------------------------------------------------ skipped rows
def where(places: Sequence[str], label: str = "line", most: int = 5) -> str:
    """`line 4` / `lines 4, 7, 9, ...` (the first `most`, then how many more; no label: the places alone)."""
    shown = ", ".join(places[:most]) + (f", ... ({len(places) - most} more)" if len(places) > most else "")
    return f"{label}{'s' if len(places) > 1 else ''} {shown}" if label else shown


def skip_summary(reasons: dict[str, list[str]], label: str = "line") -> str:
    """`2 without an image (lines 4, 7), 1 image that does not open (line 9: x.png)` from reason -> places."""
    return ", ".join(f"{len(places)} {reason} ({where(places, label)})" for reason, places in reasons.items() if places)


def warn(message: str) -> None:
    """`vtlab: warning: <message>` on stderr, once per job (rank 0 of a DDP job only)."""
    if process_rank() == 0:
        print(f"vtlab: warning: {message}", file=sys.stderr)


def check_answer_lengths(dataset: VQADataset, count_tokens: Callable[[str], int] | Any, context: int,
                         prompt_tokens: int = 0, what: str | None = None) -> VQADataset:
    """`dataset` without the samples whose question + answer (+ `prompt_tokens`: the image tokens and the chat
    template) are longer than `context` tokens, each counted under "longer than the LM's context".

    `count_tokens` is a tokenizer (called with add_special_tokens=False) or a function text -> token count.
    Returns `dataset` itself when everything fits; else a VQASubset (its `skipped` / `skip_reasons` include
    these) after a one-line warning. No sample fitting is a DataError saying what the shortest one needs."""
    if hasattr(count_tokens, "encode"):
        tok = count_tokens

        def count_tokens(text: str) -> int:
            return len(tok.encode(text, add_special_tokens=False))
    keep: list[int] = []
    too_long: list[str] = []
    shortest = None
    for i in range(len(dataset)):
        question, answer, _, sid = dataset.text(i)
        n = prompt_tokens + count_tokens(question) + count_tokens(answer)
        if n <= context:
            keep.append(i)
        else:
            too_long.append(f"{sid or i}: {n} tokens")
            shortest = n if shortest is None else min(shortest, n)
    if not too_long:
        return dataset
    name = what or dataset.name
    if not keep:
        raise DataError(f"{name}: none of the {len(dataset)} samples fits the LM's context of {context} tokens "
                        f"(text.max_position_embeddings; {prompt_tokens} of them for the image and the prompt; the "
                        f"shortest sample needs {shortest}); use an LM with a longer context, fewer visual tokens or "
                        f"shorter questions and answers")
    reason = f"longer than the LM's context of {context} tokens"
    warn(f"{name}: skipped {len(too_long)} of {len(dataset)} samples ({skip_summary({reason: too_long}, label='')})")
    return VQASubset(dataset, keep, {reason: len(too_long)})
