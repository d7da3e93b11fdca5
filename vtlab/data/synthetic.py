"""An embedded synthetic classification set that needs fine spatial detail: count the tiny "+" glyphs.

`task="count_plus"` (default): every image holds the same number of glyphs (`num_classes - 1 + distractors`),
each a thin "+" (target) or "x" (distractor) a few pixels wide, drawn in a random colour at a random cell
of a jittered grid over a noisy dark background. The label is the number of "+" glyphs (0 .. num_classes-1).
"+" and "x" have the same pixel count, the same colour distribution and the same total glyph count per
image, so neither mean intensity nor colour nor a coarse blob count tells the classes apart: a model has
to resolve the shape of glyphs smaller than one patch, which is what the patch and visual-token budget decide.

`task="count"`: only "+" glyphs, label = how many (a coarse task; `+experiment=quick_train` learns it; the
CPU tests use it).
`glyphs_per_class=k` (both tasks): label c means c * k "+" glyphs (and (num_classes - 1) * k + distractors glyphs in
all for count_plus), a denser variant for large images where a handful of glyphs is a needle in 1024 patches.
Each sample is generated on the fly from (seed, split, index) with numpy's SeedSequence, so the set is
deterministic, needs no download and stores nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from vtlab.errors import ConfigError

SPLITS = {"train": 0, "val": 1, "test": 2}
TASKS = ("count_plus", "count")


def default_glyph_size(image_size: int) -> int:
    """Odd glyph side that stays below one 16 px patch at 512 px: 5 px at 64 px, 13 px at 512 px."""
    g = max(5, image_size // 40)
    return g if g % 2 else g + 1


def glyph_masks(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(plus, cross) boolean masks of side `size` with the same number of pixels (2 * size - 1)."""
    c = size // 2
    plus = np.zeros((size, size), dtype=bool)
    plus[c, :] = True
    plus[:, c] = True
    idx = np.arange(size)
    cross = np.zeros((size, size), dtype=bool)
    cross[idx, idx] = True
    cross[idx, size - 1 - idx] = True
    return plus, cross


@dataclass(frozen=True)
class GlyphSpec:
    image_size: int
    num_classes: int = 4
    distractors: int = 3
    glyph_size: int | None = None
    task: str = "count_plus"  # count_plus | count
    glyphs_per_class: int = 1  # label k means k * glyphs_per_class "+" glyphs (dense variants for large images)

    @property
    def glyph(self) -> int:
        return self.glyph_size or default_glyph_size(self.image_size)

    @property
    def cell(self) -> int:
        return 2 * self.glyph

    @property
    def num_glyphs(self) -> int:
        return (self.num_classes - 1) * self.glyphs_per_class + (self.distractors if self.task == "count_plus" else 0)

    def check(self) -> None:
        if self.num_classes < 2:
            raise ConfigError(f"data.num_classes={self.num_classes} must be >= 2 for the synthetic set")
        if self.task not in TASKS:
            raise ConfigError(f"data.task={self.task!r} is unknown; valid: {', '.join(TASKS)}")
        if self.glyph_size is not None and (self.glyph_size < 3 or self.glyph_size % 2 == 0):
            # an even side has no centre pixel: the "x" diagonals do not cross and it gets one pixel more than
            # the "+", so mean intensity alone would tell the classes apart
            raise ConfigError(f"data.glyph_size={self.glyph_size} must be an odd number >= 3 (or null for the default)")
        if self.glyphs_per_class < 1:
            raise ConfigError(f"data.glyphs_per_class={self.glyphs_per_class} must be >= 1")
        if self.distractors < 0:
            raise ConfigError(f"data.distractors={self.distractors} must be >= 0")
        cells = (self.image_size // self.cell) ** 2
        if self.num_glyphs > cells:
            raise ConfigError(
                f"the synthetic set cannot place {self.num_glyphs} glyphs "
                f"((data.num_classes - 1) * data.glyphs_per_class + data.distractors) "
                f"of {self.glyph}px in a {self.image_size}px image ({cells} cells of {self.cell}px); "
                f"use fewer classes or distractors, a smaller data.glyph_size or a larger data.image_size"
            )


def render(spec: GlyphSpec, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """One (3, S, S) uint8 image and its label (the number of "+" glyphs)."""
    s, g, cell = spec.image_size, spec.glyph, spec.cell
    label = int(rng.integers(spec.num_classes))
    img = rng.integers(0, 48, size=(3, s, s), dtype=np.uint8)
    per_row = s // cell
    plus_count = label * spec.glyphs_per_class
    count = spec.num_glyphs if spec.task == "count_plus" else plus_count
    slots = rng.choice(per_row * per_row, size=count, replace=False)
    plus, cross = glyph_masks(g)
    for i, slot in enumerate(slots):
        y = (slot // per_row) * cell + int(rng.integers(0, cell - g + 1))
        x = (slot % per_row) * cell + int(rng.integers(0, cell - g + 1))
        mask = plus if i < plus_count else cross
        colour = rng.integers(128, 256, size=3, dtype=np.uint8)
        patch = img[:, y : y + g, x : x + g]
        patch[:, mask] = colour[:, None]
    return img, label


class GlyphCount(Dataset):
    """`len` samples of one split, sample i generated from (seed, split, i); items are (image, label)."""

    def __init__(
        self,
        spec: GlyphSpec,
        length: int,
        split: str = "train",
        seed: int = 0,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        spec.check()
        self.spec = spec
        self.length = length
        self.split_id = SPLITS[split]
        self.seed = seed
        self.transform = transform
        self.classes = [str(k) for k in range(spec.num_classes)]

    def __len__(self) -> int:
        return self.length

    def raw(self, index: int) -> tuple[torch.Tensor, int]:
        """The uint8 (3, S, S) image before any transform, and its label."""
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, self.split_id, index])
        img, label = render(self.spec, rng)
        return torch.from_numpy(img), label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, label = self.raw(index)
        return (self.transform(img) if self.transform else img), label
