"""Image files on disk: opening one (`load_rgb`, errors as one `DataError` naming the file) and listing a folder's
(`image_files`, each real folder once), for the folder data sets (vtlab.data.folders, conversations, easyvqa).

Kept apart from vtlab.data.folders so that reading the config schema (which checks a conversations folder) does
not import torchvision (~2.5 s on a 2-core machine). `IMAGE_EXTENSIONS` is torchvision's
`torchvision.datasets.folder.IMG_EXTENSIONS` (tests/test_data.py checks they are the same).
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vtlab.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def load_rgb(path: str) -> Image.Image:
    """Open and decode an image (its own mode: the family preprocessor converts RGBA, P, LA as upstream does), or
    raise DataError naming the file."""
    try:
        with open(path, "rb") as fh:
            img = Image.open(fh)
            img.load()  # decode now (errors surface here); the family's preprocessor converts the mode
            return img
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc.__class__.__name__}: {exc}; remove or replace the file") from None


def image_files(folder: Path) -> list[str]:
    """Image paths under `folder`, sorted; every real folder is visited once (symlink loops and a link to a
    folder already seen add nothing)."""
    exts = IMAGE_EXTENSIONS
    seen: set[str] = set()
    found: list[str] = []
    for here, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        found += [os.path.join(here, f) for f in sorted(files) if f.lower().endswith(exts)]
    return sorted(found)
