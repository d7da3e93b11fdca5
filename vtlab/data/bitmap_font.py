"""A 5x7 bitmap font drawn as numpy masks, for the OCR-like questions of the synthetic VQA set (vtlab.data.vqa_synthetic).

No system font is read: every character is a 7-row, 5-column bitmap written out below (the classic
dot-matrix LCD shapes, drawn here by hand), scaled by an integer factor with `np.kron`. The character set
leaves out i, l, o, 0 and 1, which a 5x7 matrix draws almost alike, so that a string rendered at scale 1 is
still readable in principle and a failure to read it is the model's. Mirrors nothing upstream.
"""

from __future__ import annotations

from functools import cache

import numpy as np

CHAR_W, CHAR_H = 5, 7
GAP = 1  # blank columns between two characters (times the scale)

_ROWS = {
    "a": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "b": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "c": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "d": ("####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####."),
    "e": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "f": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "g": (".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"),
    "h": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "j": ("..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."),
    "k": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "m": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "n": ("#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"),
    "p": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "q": (".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"),
    "r": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "s": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "t": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "u": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "v": ("#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."),
    "w": ("#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."),
    "x": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
    "y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
    "z": ("#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
}

CHARSET: tuple[str, ...] = tuple(_ROWS)


@cache
def char_mask(char: str, scale: int = 1) -> np.ndarray:
    """The boolean (7 * scale, 5 * scale) mask of one character of CHARSET."""
    rows = _ROWS[char]
    base = np.array([[c == "#" for c in row] for row in rows], dtype=bool)
    return np.kron(base, np.ones((scale, scale), dtype=bool))


def text_size(length: int, scale: int) -> tuple[int, int]:
    """(height, width) in px of a `length`-character string at `scale`."""
    return CHAR_H * scale, (length * (CHAR_W + GAP) - GAP) * scale


def text_mask(text: str, scale: int = 1) -> np.ndarray:
    """The boolean mask of `text` (characters of CHARSET) on one line, GAP * scale blank columns apart."""
    h, w = text_size(len(text), scale)
    out = np.zeros((h, w), dtype=bool)
    pitch = (CHAR_W + GAP) * scale
    for i, ch in enumerate(text):
        out[:, i * pitch : i * pitch + CHAR_W * scale] = char_mask(ch, scale)
    return out


def read_mask(mask: np.ndarray, length: int, scale: int) -> str:
    """Decode a string from a lit mask whose top-left lit pixel starts the first character (the inverse of
    `text_mask`, for tests: every character lights its top row and its left column); '?' for no match."""
    ys, xs = np.nonzero(mask)
    top, left = int(ys.min()), int(xs.min())
    pitch = (CHAR_W + GAP) * scale
    out = []
    for i in range(length):
        block = mask[top : top + CHAR_H * scale, left + i * pitch : left + i * pitch + CHAR_W * scale]
        cells = block[scale // 2 :: scale, scale // 2 :: scale]  # the centre pixel of each scaled dot
        match = [c for c in CHARSET if cells.shape == (CHAR_H, CHAR_W) and np.array_equal(cells, char_mask(c, 1))]
        out.append(match[0] if match else "?")
    return "".join(out)
