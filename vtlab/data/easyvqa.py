"""easy-VQA (`data.kind=easy_vqa`): the `easy-vqa` pip package's 64x64 PNGs of one coloured shape and its questions.

Reads the package's own accessors (`easy_vqa.get_train_questions()` / `get_test_questions()`, which return
(texts, answers, image ids), and `get_train_image_paths()` / `get_test_image_paths()`, image id -> PNG path);
its test split is vtlab's `val` (and `test`). Question types follow from the 13 answers (`get_answers()`):
`shape` (circle, rectangle, triangle), `color` (the 8 colours) and `yes_no`; `data.qtypes` keeps some of them.
Questions are lowercased with "?" as its own word ("what color is the shape ?"). `data.train_size` /
`data.val_size` keep a seeded subset (null: every question). Images open lazily through
vtlab.data.images.load_rgb. A coarse control: one large shape per image should not need many tokens.
Mirrors the easy-vqa package (github.com/vzhou842/easy-VQA), read, not copied.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from vtlab.data.images import load_rgb
from vtlab.data.vqa import SPLITS, VQADataset, normalize_text, words
from vtlab.errors import ConfigError

QTYPES = ("shape", "color", "yes_no")
SHAPE_ANSWERS = ("circle", "rectangle", "triangle")
MISSING = "data.kind=easy_vqa needs the easy-vqa package: pip install easy-vqa"


def easy_vqa_module() -> Any:
    """The imported `easy_vqa` package, or a ConfigError saying how to install it."""
    try:
        import easy_vqa
    except ImportError:
        raise ConfigError(MISSING) from None
    return easy_vqa


def qtype_of(answer: str) -> str:
    """easy-VQA's question type from its answer: shape | color | yes_no."""
    if answer in ("yes", "no"):
        return "yes_no"
    return "shape" if answer in SHAPE_ANSWERS else "color"


class EasyVQA(VQADataset):
    """One split of easy-VQA: the questions of the kept types (a seeded subset of `size` of them, if given)."""

    question_types = QTYPES

    def __init__(self, split: str = "train", qtypes: tuple[str, ...] | None = None, size: int | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        ev = easy_vqa_module()
        train = split == "train"
        texts, answers, image_ids = ev.get_train_questions() if train else ev.get_test_questions()
        self.paths: dict[int, str] = ev.get_train_image_paths() if train else ev.get_test_image_paths()
        self.all_answers = tuple(ev.get_answers())
        self.name = f"easy_vqa/{split}"
        self.split = split
        if qtypes is not None:
            self.question_types = tuple(q for q in QTYPES if q in qtypes)
        keep = [i for i, a in enumerate(answers) if qtype_of(a) in self.question_types]
        if size is not None and size < len(keep):  # the questions are grouped by image: a seeded subset, in order
            pick = np.random.default_rng([seed, SPLITS[split]]).permutation(len(keep))[:size]
            keep = [keep[i] for i in sorted(pick)]
        self.rows = [(normalize_text(texts[i]), answers[i], int(image_ids[i]), i) for i in keep]

    @classmethod
    def from_config(cls, data: Any, split: str) -> EasyVQA:
        size = data.train_size if split == "train" else data.val_size
        qtypes = tuple(data.qtypes) if data.qtypes is not None else None
        return cls(split, qtypes, size, int(data.seed))

    def __len__(self) -> int:
        return len(self.rows)

    def text(self, index: int) -> tuple[str, str, str, str]:
        question, answer, _, qid = self.rows[index]
        return question, answer, qtype_of(answer), f"{self.split}/q{qid}"

    def image(self, index: int) -> Image.Image:
        return load_rgb(self.paths[self.rows[index][2]])

    def image_hw(self, index: int) -> tuple[int, int]:
        with Image.open(self.paths[self.rows[index][2]]) as im:  # the header only
            return (im.height, im.width)

    def vocabulary(self) -> list[str]:
        """The package's 27 question words and 13 answers (the same for every split and subset)."""
        ev = easy_vqa_module()
        texts = ev.get_train_questions()[0] + ev.get_test_questions()[0]
        return sorted({w for t in set(texts) for w in words(t)} | set(self.all_answers))

    def answer_set(self, qtype: str) -> tuple[str, ...] | None:
        self._check_type(qtype)
        return tuple(a for a in self.all_answers if qtype_of(a) == qtype)
