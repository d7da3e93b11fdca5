"""Real data from image folders: `<root>/train/<class>/*.png` and `<root>/val/<class>/*.png` (torchvision ImageFolder).

Problems are reported before training starts, in one message each: a missing root or split folder, a split
without class folders, a class folder without images, train and val with different classes. An image that
cannot be decoded (or a decompression bomb, PIL's DecompressionBombError) raises `DataError` naming the file.
Files are listed by `image_files`, which follows a symlinked folder once only (torchvision's os.walk with
followlinks=True goes round a symlink loop until the path is too long, multiplying the images).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchvision.datasets import ImageFolder

from vtlab.data.images import IMAGE_EXTENSIONS, image_files, load_rgb  # noqa: F401  (load_rgb re-exported)
from vtlab.errors import ConfigError


class ImageFolderOnce(ImageFolder):
    """torchvision's ImageFolder with its file listing from `image_files`."""

    @staticmethod
    def make_dataset(directory: str, class_to_idx: dict[str, int] | None = None, extensions: Any = None,
                     is_valid_file: Any = None, allow_empty: bool = False) -> list[tuple[str, int]]:
        assert class_to_idx is not None
        return [(path, idx) for cls, idx in sorted(class_to_idx.items(), key=lambda kv: kv[1])
                for path in image_files(Path(directory) / cls)]


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
    exts = IMAGE_EXTENSIONS
    empty = [c for c in classes if not image_files(folder / c)]
    if len(empty) == len(classes):
        raise ConfigError(
            f"{folder} has class folders {classes[:10]} but no images in them (extensions: {', '.join(exts)})"
        )
    if empty:  # an empty class would still count as a class (a head output that can never be right)
        raise ConfigError(f"{folder}: class folder(s) {empty[:10]} hold no images; remove them or add images "
                          f"(extensions: {', '.join(exts)})")
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
        return ImageFolderOnce(str(folder), transform=transform, loader=load_rgb, allow_empty=True)
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
