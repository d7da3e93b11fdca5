"""Real data from image folders: `<root>/train/<class>/*.png` and `<root>/val/<class>/*.png` (torchvision ImageFolder).

Problems are reported before training starts, in one message each: a missing root or split folder, a split
without class folders or without images, train and val with different classes. An image that cannot be
decoded raises `DataError` naming the file (instead of a PIL traceback from inside a DataLoader worker).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from vtlab.errors import ConfigError, DataError


def load_rgb(path: str) -> Image.Image:
    """Open and decode an image (its own mode: the family preprocessor converts RGBA, P, LA as upstream does), or
    raise DataError naming the file."""
    try:
        with open(path, "rb") as fh:
            img = Image.open(fh)
            img.load()  # decode now (errors surface here); the family's preprocessor converts the mode
            return img
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc.__class__.__name__}: {exc}; remove or replace the file") from None


def check_split_folder(root: Path, split: str) -> Path:
    """`root/split` as a Path after checking that it holds class folders with images."""
    folder = root / split
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise ConfigError(
            f"data.root={root} has no '{split}/' folder (found: {found or 'no folders'}); expected "
            f"{root}/train/<class>/<image> and {root}/val/<class>/<image>"
        )
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise ConfigError(f"{folder} is empty: it needs one sub-folder per class with images inside")
    exts = tuple(IMG_EXTENSIONS)
    if not any(f.suffix.lower() in exts for c in classes for f in (folder / c).rglob("*") if f.is_file()):
        raise ConfigError(
            f"{folder} has class folders {classes[:10]} but no images in them (extensions: {', '.join(exts)})"
        )
    return folder


def image_folder(root: str | None, split: str, transform: Callable | None = None) -> ImageFolder:
    """An ImageFolder over `root/split` with clear errors for missing, empty or unreadable data."""
    if root is None or root in ("", "???"):
        raise ConfigError("data=folder needs data.root=PATH (a folder with train/ and val/ class sub-folders)")
    base = Path(root).expanduser()
    if not base.exists():
        raise ConfigError(f"data.root={root} does not exist")
    if not base.is_dir():
        raise ConfigError(f"data.root={root} is not a folder")
    folder = check_split_folder(base, split)
    try:
        return ImageFolder(str(folder), transform=transform, loader=load_rgb, allow_empty=True)
    except (FileNotFoundError, OSError) as exc:
        raise ConfigError(f"cannot index {folder}: {exc}") from None


def check_same_classes(train: ImageFolder, val: ImageFolder) -> None:
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise ConfigError(
            f"train/ and val/ have different classes (only in train: {only_train}, only in val: {only_val}); "
            "both splits need the same class folders"
        )
