"""ImageFolder data sets for fine-tuning, with the checks that turn a wrong layout into one clear message.

Unreadable images are not skipped: the first one stops training with its path (:class:`UnreadableImageError`),
since silently training on less data than the user thinks is worse than a clear stop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

from PIL import Image
from torchvision.datasets import ImageFolder

from effnetv2.data.images import open_image


class DatasetError(ValueError):
    """The data folder does not have the ``train/<class>/*`` and ``val/<class>/*`` layout training needs."""


class UnreadableImageError(OSError):
    """An image file PIL cannot decode."""


def load_rgb(path: str) -> Image.Image:
    """Open an image as 8-bit RGB, upright (:func:`~effnetv2.data.images.open_image`), naming the file when it cannot
    be read."""
    try:
        return open_image(path)
    except (OSError, ValueError) as e:  # ValueError: too large (decompression bomb), out-of-range samples
        raise UnreadableImageError(f"cannot read image {path}: {e}; remove or replace the file") from None


def image_folders(
    root: Path, train_transform: Optional[Callable] = None, val_transform: Optional[Callable] = None
) -> tuple[ImageFolder, ImageFolder]:
    """``root/train`` and ``root/val`` as ImageFolders with the same ≥ 2 classes (in the same order).

    Raises :class:`DatasetError` naming what is wrong; set the ``transform`` attributes later if you like.
    """
    root = Path(root)
    sets = {}
    for split, tf in (("train", train_transform), ("val", val_transform)):
        folder = root / split
        if not folder.is_dir():
            raise DatasetError(f"{folder} is not a folder; expected {root}/{{train,val}}/<class>/<image>")
        try:
            sets[split] = ImageFolder(str(folder), transform=tf, loader=load_rgb)
        except FileNotFoundError as e:  # no class folders, or class folders without images
            raise DatasetError(f"{folder}: {e}") from None
    train, val = sets["train"], sets["val"]
    if len(train.classes) < 2:
        raise DatasetError(f"{root / 'train'} has {len(train.classes)} class folder(s); classification needs >= 2")
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise DatasetError(
            f"train and val class folders differ (only in train: {only_train[:5]}, only in val: {only_val[:5]}); "
            "give both splits the same class folders"
        )
    return train, val
