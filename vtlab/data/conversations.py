"""The user's own VQA data (`data.kind=conversations`): images plus JSONL rows of LLaVA-style conversations.

Layout: `data.root/` holds `train.jsonl` and `val.jsonl` (`data.train_jsonl`, `data.val_jsonl`; the test split
reads the val file) and the images they name, one JSON object a line:

    {"id": "17", "image": "imgs/17.png", "conversations": [{"from": "human", "value": "<image>\\nWhat is it?"},
                                                           {"from": "gpt", "value": "A cat."}]}

The format of LLaVA's instruction data (LLaVA repo, llava/train/train.py, LazySupervisedDataset with
`image_folder`): `image` is relative to the root (or absolute), `from` is human | gpt (user | assistant are
read as the same). Each human -> gpt pair is one sample, its question the human turn with the `<image>`
placeholder removed (the VLM places the image tokens as its family does); later pairs do not see earlier ones.
An optional `qtype` key sets the question type (default `conversation`) for per-type accuracy. As in LLaVA the
images open lazily (vtlab.data.images.load_rgb); unlike LLaVA, every row is checked when the set is built.

Bad rows are skipped and counted, never silently: a line that is not a JSON object, a row without an image,
an image file that is missing or does not open (PIL reads its header and checks the file), a conversation
without a human turn, a human turn without a question or without an answer. One warning line on stderr says
how many of how many rows were skipped, for which reasons and on which lines; `skipped` / `skip_reasons` hold
the counts. No usable row is a DataError; a missing root or JSONL file is a ConfigError naming `data.root`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from vtlab.data.images import load_rgb
from vtlab.data.vqa import SPLITS, VQADataset, skip_summary, warn, words
from vtlab.errors import ConfigError, DataError

HUMAN, GPT = ("human", "user"), ("gpt", "assistant")
IMAGE_PLACEHOLDER = "<image>"
DEFAULT_QTYPE = "conversation"
# the skip reasons, in the order the report lists them
NOT_JSON = "not a JSON object"
NO_IMAGE = "without an image"
MISSING_IMAGE = "image file that is missing"
BAD_IMAGE = "image that does not open"
NO_HUMAN = "without a human turn"
NO_QUESTION = "human turn without a question"
NO_ANSWER = "without an answer"
REASONS = (NOT_JSON, NO_IMAGE, MISSING_IMAGE, BAD_IMAGE, NO_HUMAN, NO_QUESTION, NO_ANSWER)
LAYOUT = ("{root}/train.jsonl and {root}/val.jsonl (data.train_jsonl, data.val_jsonl) of LLaVA-style rows "
          '{{"image": "rel/path.png", "conversations": [{{"from": "human", ...}}, {{"from": "gpt", ...}}]}}')


def check_root(root: str | None) -> Path:
    """`data.root` as a folder, or a ConfigError saying what is expected there."""
    if root is None or root in ("", "???"):
        raise ConfigError("data=conversations needs data.root=PATH: a folder with " + LAYOUT.format(root="PATH"))
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ConfigError(f"data.root={root} {'is not a folder' if base.exists() else 'does not exist'}; expected "
                          + LAYOUT.format(root=root))
    return base


def jsonl_path(data: Any, split: str) -> Path:
    """The split's JSONL file under data.root (ConfigError if it is not there)."""
    base = check_root(data.root)
    key = "train_jsonl" if split == "train" else "val_jsonl"
    name = getattr(data, key)
    path = Path(name) if Path(name).is_absolute() else base / name
    if not path.is_file():
        found = sorted(p.name for p in base.glob("*.jsonl"))
        raise ConfigError(f"data.root={data.root} has no {name} for the {split} split (data.{key}={name}; .jsonl files "
                          f"there: {found or 'none'}); expected " + LAYOUT.format(root=data.root))
    return path


def image_problem(path: Path, cache: dict[str, str | None]) -> str | None:
    """None if the image opens (header read and file checked by PIL), else the skip reason."""
    key = str(path)
    if key not in cache:
        if not path.is_file():
            cache[key] = MISSING_IMAGE
        else:
            try:
                with Image.open(path) as img:
                    img.verify()
                cache[key] = None
            except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError):
                cache[key] = BAD_IMAGE
    return cache[key]


def parse_row(line: str, root: Path, cache: dict[str, str | None]) -> tuple[str | None, str, list[tuple[str, str]],
                                                                           str, str]:
    """(skip reason or None, image path as written, [(question, answer)], qtype, row id) of one JSONL line."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return NOT_JSON, "", [], "", ""
    if not isinstance(row, dict):
        return NOT_JSON, "", [], "", ""
    image = row.get("image")
    rid = str(row.get("id", ""))
    qtype = str(row.get("qtype") or DEFAULT_QTYPE)
    if not isinstance(image, str) or not image.strip():
        return NO_IMAGE, "", [], qtype, rid
    turns = row.get("conversations")
    turns = [t for t in turns if isinstance(t, dict)] if isinstance(turns, list) else []
    roles = [str(t.get("from", "")).lower() for t in turns]
    if not any(r in HUMAN for r in roles):
        return NO_HUMAN, image, [], qtype, rid
    pairs: list[tuple[str, str]] = []
    for i, role in enumerate(roles):
        if role not in HUMAN:
            continue
        question = str(turns[i].get("value") or "").replace(IMAGE_PLACEHOLDER, " ").strip()
        if not question:
            return NO_QUESTION, image, [], qtype, rid
        reply = turns[i + 1] if i + 1 < len(turns) and roles[i + 1] in GPT else None
        answer = str(reply.get("value") or "").strip() if reply is not None else ""
        if not answer:
            return NO_ANSWER, image, [], qtype, rid
        pairs.append((" ".join(question.split()), answer))
    problem = image_problem(Path(image) if os.path.isabs(image) else root / image, cache)
    return problem, image, pairs, qtype, rid


class Conversations(VQADataset):
    """One split of a conversations folder: every human -> gpt pair of the rows that are fine."""

    def __init__(self, path: Path, root: Path, split: str = "train", qtypes: tuple[str, ...] | None = None,
                 size: int | None = None, seed: int = 0) -> None:
        super().__init__()
        self.path, self.root, self.split = path, root, split
        self.name = path.name
        places: dict[str, list[str]] = {r: [] for r in REASONS}
        cache: dict[str, str | None] = {}
        self.samples: list[tuple[str, str, str, str, str]] = []  # (image, question, answer, qtype, id)
        rows = 0
        with open(path, encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                rows += 1
                problem, image, pairs, qtype, rid = parse_row(line, root, cache)
                if problem is not None:
                    named = problem in (MISSING_IMAGE, BAD_IMAGE)
                    places[problem].append(f"{number}: {image}" if named else str(number))
                    continue
                for k, (question, answer) in enumerate(pairs):
                    self.samples.append((image, question, answer, qtype, f"{rid or number}/{k}"))
        self.rows = rows
        self.skip_reasons = {r: len(p) for r, p in places.items() if p}
        self.skipped = sum(self.skip_reasons.values())
        summary = skip_summary(places)
        if not self.samples:
            what = f"all {rows} rows were skipped ({summary})" if rows else "it holds no rows"
            raise DataError(f"{path}: no usable row: {what}; each line needs an image that opens and a human turn "
                            f"followed by a gpt answer")
        if self.skipped:
            warn(f"{path.name}: skipped {self.skipped} of {rows} rows ({summary})")
        found = tuple(dict.fromkeys(s[3] for s in self.samples))
        if qtypes is not None:
            unknown = [q for q in qtypes if q not in found]
            if unknown:
                raise ConfigError(f"data.qtypes={list(qtypes)}: {path.name} has no question type {unknown}; its "
                                  f"types (the rows' qtype key, default {DEFAULT_QTYPE}): {', '.join(found)}")
            self.samples = [s for s in self.samples if s[3] in qtypes]
            found = tuple(q for q in found if q in qtypes)
        self.question_types = found
        if size is not None and size < len(self.samples):
            pick = np.random.default_rng([seed, SPLITS[split]]).permutation(len(self.samples))[:size]
            self.samples = [self.samples[i] for i in sorted(pick)]

    @classmethod
    def from_config(cls, data: Any, split: str) -> Conversations:
        size = data.train_size if split == "train" else data.val_size
        qtypes = tuple(data.qtypes) if data.qtypes is not None else None
        return cls(jsonl_path(data, split), check_root(data.root), split, qtypes, size, int(data.seed))

    def __len__(self) -> int:
        return len(self.samples)

    def text(self, index: int) -> tuple[str, str, str, str]:
        _, question, answer, qtype, sid = self.samples[index]
        return question, answer, qtype, sid

    def image(self, index: int) -> Image.Image:
        image = self.samples[index][0]
        return load_rgb(image if os.path.isabs(image) else str(self.root / image))

    def image_hw(self, index: int) -> tuple[int, int]:
        """The size from the file's header (PIL opens lazily; the rows' images were checked when loaded)."""
        image = self.samples[index][0]
        with Image.open(image if os.path.isabs(image) else str(self.root / image)) as im:
            return (im.height, im.width)

    def vocabulary(self) -> list[str]:
        return sorted({w for _, q, a, _, _ in self.samples for w in words(q) + words(a)})
