"""The embedded synthetic VQA set (`data.kind=vqa`): questions with short text answers that need different detail.

Question types (`data.qtypes`, default all), each with its difficulty knob:
- `count`: "how many circle glyphs are there ?" -> "0".."count_max": small glyphs of one shape among
  distractor glyphs of the other shapes (knobs `count_glyph_size` px, `count_distractors`);
- `ocr`: "what does the text say ?" -> "k 7 q": a short string in a 5x7 bitmap font (vtlab.data.bitmap_font),
  the characters separated by spaces so that each answer word is one character (knobs `ocr_length`,
  `ocr_scale`: the integer scale of the 5x7 dots);
- `spatial`: "what color is the shape at the top left ?" / "what shape is in row 2 column 4 ?" on an n x n
  grid of shapes, every cell filled (knob `spatial_grid`; positions are named up to 3 x 3, numbered above);
- `compare`: "are there more glyphs on the left or the right ?" -> left | right (knobs `compare_glyphs`: the
  glyphs in all, `compare_glyph_size`).
Sample i has type `qtypes[i % T]` and, for count / spatial / compare, answer number `(i // T) mod K` of the
type's K answers, so answers are balanced by construction (the OCR characters are uniform): `chance(qtype)`
is the exact accuracy of the best answer that ignores the image. Everything else (which shape, where, which
colours) is drawn from numpy's SeedSequence over (data.seed, split, index), one child stream for the text
and one for the pixels, so a question is known without rendering its image and nothing is stored. Images are
square RGB at `data.image_size`, bright shapes on dark noise (the look of vtlab.data.synthetic's glyph set).
Mirrors nothing upstream (CV-Bench-style 2D questions, captcha-style strings; see docs/field-scan.md 3.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from vtlab.data.bitmap_font import CHARSET, text_mask, text_size
from vtlab.data.vqa import SPLITS, VQADataset, words
from vtlab.errors import ConfigError

QTYPES = ("count", "ocr", "spatial", "compare")
SHAPES = ("circle", "square", "triangle", "plus", "cross")
COLORS = {"red": (230, 50, 50), "green": (50, 200, 70), "blue": (60, 110, 245), "yellow": (235, 215, 50),
          "purple": (175, 80, 225), "orange": (245, 140, 35)}
MIN_GLYPH = 5  # below 5 px a circle, a square and a plus are the same pixels
MAX_COUNT = 9  # count answers are single digits
MAX_GRID = 9  # spatial rows and columns are single digits
MAX_OCR = 16
DEFAULT_SIZE = 128  # render size when neither data.image_size nor the tower input size is given
ROWS3, COLS3 = ("top", "middle", "bottom"), ("left", "center", "right")


def default_glyph_size(image_size: int) -> int:
    """5 px up to 128 px images, then image_size / 24 (16 px at 384, 21 px at 512: about one 16 px patch)."""
    return max(MIN_GLYPH, image_size // 24)


def default_ocr_scale(image_size: int) -> int:
    """The 5x7 font at scale 1 up to 191 px, then image_size // 96 (5 at 512 px: 25 x 35 px characters)."""
    return max(1, image_size // 96)


@cache
def shape_mask(kind: str, size: int) -> np.ndarray:
    """Boolean (size, size) mask of one of SHAPES (strokes of plus / cross are size / 5 px thick)."""
    u = (np.arange(size) + 0.5) / size * 2 - 1  # pixel centres in (-1, 1)
    y, x = np.meshgrid(u, u, indexing="ij")
    half = max(1, round(size / 5)) / size  # half a stroke, in the same units
    if kind == "circle":
        return x**2 + y**2 <= 0.9**2
    if kind == "square":
        return (np.abs(x) <= 0.9) & (np.abs(y) <= 0.9)
    if kind == "triangle":  # apex up
        return (np.abs(x) <= (y + 1) / 2 * 0.95) & (y <= 0.9)
    if kind == "plus":
        return (np.abs(x) <= half) | (np.abs(y) <= half)
    if kind == "cross":
        return (np.abs(x - y) <= half * 1.42) | (np.abs(x + y) <= half * 1.42)
    raise KeyError(kind)


def position_name(row: int, col: int, grid: int) -> str:
    """"top left" / "center" for grids up to 3 x 3, "row 2 column 4" (1-based) above."""
    if grid > 3:
        return f"in row {row + 1} column {col + 1}"
    r = (ROWS3[0], ROWS3[2])[row] if grid == 2 else ROWS3[row]
    c = (COLS3[0], COLS3[2])[col] if grid == 2 else COLS3[col]
    return "at the center" if (r, c) == ("middle", "center") else f"at the {r} {c}"


def _questions() -> list[str]:
    """Every question the generator can ask (for the fixed vocabulary)."""
    out = [f"how many {k} glyphs are there ?" for k in SHAPES]
    out += ["what does the text say ?", "are there more glyphs on the left or the right ?"]
    for grid in range(2, MAX_GRID + 1):
        for r in range(grid):
            for c in range(grid):
                where = position_name(r, c, grid)
                out += [f"what color is the shape {where} ?", f"what shape is {where} ?"]
    return out


ANSWER_WORDS = (*(str(d) for d in range(MAX_COUNT + 1)), *CHARSET, *COLORS, *SHAPES, "left", "right")
VOCABULARY = tuple(sorted({w for q in _questions() for w in words(q)} | set(ANSWER_WORDS)))


@dataclass(frozen=True)
class VQASpec:
    """What the generator draws (DataConfig's vqa fields; None sizes follow the image size)."""

    image_size: int = DEFAULT_SIZE
    qtypes: tuple[str, ...] = QTYPES
    count_max: int = 4
    count_glyph_size: int | None = None
    count_distractors: int = 4
    ocr_length: int = 3
    ocr_scale: int | None = None
    spatial_grid: int = 3
    compare_glyphs: int = 7
    compare_glyph_size: int | None = None

    @property
    def count_glyph(self) -> int:
        return self.count_glyph_size or default_glyph_size(self.image_size)

    @property
    def compare_glyph(self) -> int:
        return self.compare_glyph_size or default_glyph_size(self.image_size)

    @property
    def scale(self) -> int:
        return self.ocr_scale or default_ocr_scale(self.image_size)

    def answers(self, qtype: str) -> tuple[str, ...] | None:
        """The answers of `qtype` in the order sample i cycles through them (None: OCR, an open set)."""
        if qtype == "count":
            return tuple(str(n) for n in range(self.count_max + 1))
        if qtype == "spatial":
            return (*COLORS, *SHAPES)
        if qtype == "compare":
            return ("left", "right")
        return None

    def chance(self, qtype: str) -> float:
        """The exact-match accuracy of the best image-blind answer (spatial: the question says colour or shape)."""
        if qtype == "ocr":
            return (1 / len(CHARSET)) ** self.ocr_length
        if qtype == "spatial":  # answers balanced over colours + shapes; a guess within the asked kind
            return 2 / (len(COLORS) + len(SHAPES))
        return 1 / len(self.answers(qtype))

    def check(self, geometry: bool = True) -> None:
        """Each knob's range, then (`geometry`) whether the drawing fits the image (ConfigError naming the data.* keys)."""
        if not self.qtypes:
            raise ConfigError(f"data.qtypes=[] is empty; valid question types: {', '.join(QTYPES)}")
        for q in self.qtypes:
            if q not in QTYPES:
                raise ConfigError(f"data.qtypes contains {q!r}, not a question type of data.kind=vqa; valid: "
                                  f"{', '.join(QTYPES)}")
        if len(set(self.qtypes)) != len(self.qtypes):
            raise ConfigError(f"data.qtypes={list(self.qtypes)} names a type twice; list each once")
        ranges = (("count_max", self.count_max, 1, MAX_COUNT, "answers are the digits 0..count_max"),
                  ("count_distractors", self.count_distractors, 0, None, "glyphs of the other shapes"),
                  ("ocr_length", self.ocr_length, 1, MAX_OCR, "characters in the string"),
                  ("ocr_scale", self.ocr_scale, 1, None, "px per font dot, or null for the default"),
                  ("spatial_grid", self.spatial_grid, 2, MAX_GRID, "rows and columns of the grid"),
                  ("compare_glyphs", self.compare_glyphs, 1, None, "glyphs in all, left and right"),
                  ("count_glyph_size", self.count_glyph_size, MIN_GLYPH, None, "px, or null for the default"),
                  ("compare_glyph_size", self.compare_glyph_size, MIN_GLYPH, None, "px, or null for the default"))
        for key, value, lo, hi, what in ranges:
            if value is not None and (value < lo or (hi is not None and value > hi)):
                valid = f"{lo}..{hi}" if hi is not None else f">= {lo}"
                raise ConfigError(f"data.{key}={value} is out of range; valid: {valid} ({what})")
        if geometry:
            self._check_geometry()

    def _check_geometry(self) -> None:
        s = self.image_size
        if "count" in self.qtypes:
            need, cells, cell = self.count_max + self.count_distractors, *_cells(s, self.count_glyph)
            if need > cells:
                raise ConfigError(
                    f"data.kind=vqa cannot place {need} count glyphs (data.count_max + data.count_distractors) of "
                    f"{self.count_glyph}px in a {s}px image ({cells} cells of {cell}px); lower data.count_distractors "
                    f"or data.count_glyph_size, or raise data.image_size")
        if "compare" in self.qtypes:
            cells, cell = _cells(s, self.compare_glyph)
            half = (s // cell // 2) * (s // cell)
            if self.compare_glyphs > half:
                raise ConfigError(
                    f"data.kind=vqa cannot place data.compare_glyphs={self.compare_glyphs} glyphs of "
                    f"{self.compare_glyph}px on one half of a {s}px image ({half} cells of {cell}px per half); lower "
                    f"data.compare_glyphs or data.compare_glyph_size, or raise data.image_size")
        if "ocr" in self.qtypes:
            h, w = text_size(self.ocr_length, self.scale)
            if w > s or h > s:
                raise ConfigError(
                    f"data.kind=vqa cannot write data.ocr_length={self.ocr_length} characters at data.ocr_scale="
                    f"{self.scale} ({w}x{h}px) in a {s}px image; lower data.ocr_length or data.ocr_scale, or raise "
                    f"data.image_size")
        if "spatial" in self.qtypes and s // self.spatial_grid < MIN_GLYPH + 2:
            raise ConfigError(
                f"data.spatial_grid={self.spatial_grid} leaves {s // self.spatial_grid}px cells in a {s}px image; "
                f"a shape needs {MIN_GLYPH + 2}px: valid grids here: 2..{max(2, min(MAX_GRID, s // (MIN_GLYPH + 2)))}")


def _cells(image_size: int, glyph: int) -> tuple[int, int]:
    """(cells, cell side) of the jittered layout grid for glyphs of side `glyph`."""
    cell = glyph + max(2, glyph // 2)
    return (image_size // cell) ** 2, cell


def spec_from_config(data: Any, image_size: int | None = None) -> VQASpec:
    """The VQASpec of a DataConfig (image size: data.image_size, else `image_size`, else DEFAULT_SIZE)."""
    size = data.image_size if isinstance(data.image_size, int) else None
    return VQASpec(
        image_size=int(size or image_size or DEFAULT_SIZE),
        qtypes=tuple(data.qtypes) if data.qtypes is not None else QTYPES,
        count_max=data.count_max, count_glyph_size=data.count_glyph_size, count_distractors=data.count_distractors,
        ocr_length=data.ocr_length, ocr_scale=data.ocr_scale, spatial_grid=data.spatial_grid,
        compare_glyphs=data.compare_glyphs, compare_glyph_size=data.compare_glyph_size,
    )


class Question(NamedTuple):
    qtype: str
    question: str
    answer: str
    params: dict[str, Any]  # what the image must show (drawn with the text stream)


def draw_question(spec: VQASpec, index: int, rng: np.random.Generator) -> Question:
    """Sample `index`'s question and answer; its type and (but OCR) its answer follow from the index alone."""
    types = spec.qtypes
    qtype = types[index % len(types)]
    cycle = index // len(types)
    answers = spec.answers(qtype)
    answer = answers[cycle % len(answers)] if answers else ""
    if qtype == "count":
        kind = SHAPES[int(rng.integers(len(SHAPES)))]
        return Question(qtype, f"how many {kind} glyphs are there ?", answer, {"kind": kind, "n": int(answer)})
    if qtype == "ocr":
        chars = [CHARSET[int(k)] for k in rng.integers(len(CHARSET), size=spec.ocr_length)]
        return Question(qtype, "what does the text say ?", " ".join(chars), {"text": "".join(chars)})
    if qtype == "spatial":
        g = spec.spatial_grid
        row, col = int(rng.integers(g)), int(rng.integers(g))
        where = position_name(row, col, g)
        asks_color = answer in COLORS
        question = f"what color is the shape {where} ?" if asks_color else f"what shape is {where} ?"
        return Question(qtype, question, answer, {"row": row, "col": col, "color" if asks_color else "kind": answer})
    return Question(qtype, "are there more glyphs on the left or the right ?", answer, {"more": answer})


def _paste(img: np.ndarray, mask: np.ndarray, y: int, x: int, color: tuple[int, int, int]) -> None:
    h, w = mask.shape
    img[y : y + h, x : x + w][mask] = color


def _random_color(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(COLORS.values())[int(rng.integers(len(COLORS)))]


def _scatter(img: np.ndarray, kinds: list[str], glyph: int, slots: np.ndarray, per_row: int, cell: int,
             rng: np.random.Generator) -> None:
    """Draw glyph `kinds[i]` in slot `slots[i]` of the jittered grid, in a random palette colour."""
    for kind, slot in zip(kinds, slots, strict=True):
        y = int(slot // per_row) * cell + int(rng.integers(0, cell - glyph))
        x = int(slot % per_row) * cell + int(rng.integers(0, cell - glyph))
        _paste(img, shape_mask(kind, glyph), y, x, _random_color(rng))


def draw_image(spec: VQASpec, q: Question, rng: np.random.Generator) -> np.ndarray:
    """The (S, S, 3) uint8 image question `q` is about."""
    s = spec.image_size
    img = rng.integers(0, 48, size=(s, s, 3), dtype=np.uint8)
    p = q.params
    if q.qtype == "count":
        g = spec.count_glyph
        _, cell = _cells(s, g)
        per_row = s // cell
        others = [k for k in SHAPES if k != p["kind"]]
        kinds = [p["kind"]] * p["n"] + [others[int(k)] for k in rng.integers(len(others), size=spec.count_distractors)]
        slots = rng.choice(per_row * per_row, size=len(kinds), replace=False)
        _scatter(img, kinds, g, slots, per_row, cell, rng)
    elif q.qtype == "ocr":
        mask = text_mask(p["text"], spec.scale)
        h, w = mask.shape
        _paste(img, mask, int(rng.integers(0, s - h + 1)), int(rng.integers(0, s - w + 1)), _random_color(rng))
    elif q.qtype == "spatial":
        g = spec.spatial_grid
        cell = s // g
        size = max(MIN_GLYPH, int(cell * 0.6))
        for r in range(g):
            for c in range(g):
                kind = SHAPES[int(rng.integers(len(SHAPES)))]
                color = _random_color(rng)
                if (r, c) == (p["row"], p["col"]):
                    kind, color = p.get("kind", kind), COLORS[p["color"]] if "color" in p else color
                y = r * cell + int(rng.integers(0, cell - size))
                x = c * cell + int(rng.integers(0, cell - size))
                _paste(img, shape_mask(kind, size), y, x, color)
    else:  # compare: the majority side holds more than half of compare_glyphs
        n = spec.compare_glyphs
        major = int(rng.integers(n // 2 + 1, n + 1))
        left = major if p["more"] == "left" else n - major
        g = spec.compare_glyph
        _, cell = _cells(s, g)
        per_row = s // cell
        half = per_row // 2  # columns [0, half) are the left half, [per_row - half, per_row) the right
        left_slots = np.array([r * per_row + c for r in range(per_row) for c in range(half)])
        right_slots = left_slots + (per_row - half)
        slots = np.concatenate([rng.choice(left_slots, size=left, replace=False),
                                rng.choice(right_slots, size=n - left, replace=False)])
        kinds = [SHAPES[int(k)] for k in rng.integers(len(SHAPES), size=n)]
        _scatter(img, kinds, g, slots, per_row, cell, rng)
    return img


class SyntheticVQA(VQADataset):
    """`length` samples of one split; sample i is generated from (seed, split, i)."""

    def __init__(self, spec: VQASpec, length: int, split: str = "train", seed: int = 0) -> None:
        super().__init__()
        spec.check()
        self.spec, self.length, self.split, self.seed = spec, length, split, seed
        self.name = f"vqa/{split}"
        self.split_id = SPLITS[split]
        self.question_types = spec.qtypes

    def __len__(self) -> int:
        return self.length

    def _streams(self, index: int) -> tuple[np.random.Generator, np.random.Generator]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        text, pixels = np.random.SeedSequence([self.seed, self.split_id, index]).spawn(2)
        return np.random.default_rng(text), np.random.default_rng(pixels)

    def question(self, index: int) -> Question:
        return draw_question(self.spec, index, self._streams(index)[0])

    def text(self, index: int) -> tuple[str, str, str, str]:
        q = self.question(index)
        return q.question, q.answer, q.qtype, f"{self.split}/{index}"

    def raw(self, index: int) -> np.ndarray:
        """Sample `index`'s (S, S, 3) uint8 image."""
        text, pixels = self._streams(index)
        return draw_image(self.spec, draw_question(self.spec, index, text), pixels)

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.raw(index))

    def image_hw(self, index: int) -> tuple[int, int]:
        return (self.spec.image_size, self.spec.image_size)  # every image is rendered square at the spec's size

    def vocabulary(self) -> list[str]:
        return list(VOCABULARY)

    def answer_set(self, qtype: str) -> tuple[str, ...] | None:
        self._check_type(qtype)
        return self.spec.answers(qtype)

    def chance(self, qtype: str) -> float:
        self._check_type(qtype)
        return self.spec.chance(qtype)


__all__ = ["QTYPES", "SHAPES", "COLORS", "VOCABULARY", "VQASpec", "SyntheticVQA", "spec_from_config"]
