"""Finding image files: the one folder search of the package (the command line's inputs, int8 calibration)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS

# Image formats Pillow (or a plugin) may read that torchvision's IMG_EXTENSIONS leave out of a folder search.
OTHER_IMAGE_EXTENSIONS = (".gif", ".apng", ".avif", ".heic", ".heif", ".jp2", ".jxl", ".ico", ".tga", ".psd")


def _raise(error: OSError) -> None:
    raise error


def find_image_files(folder: Path, on_unlisted: Callable[[OSError], None] = _raise) -> tuple[list[Path], list[Path]]:
    """The files of ``folder`` and its subfolders with one of torchvision's ``IMG_EXTENSIONS``, sorted, and those
    with an :data:`OTHER_IMAGE_EXTENSIONS` one (which a folder search passes over).

    Symbolic links to folders are not followed (as ``Path.rglob``); dangling links are left out. A folder that
    cannot be listed goes to ``on_unlisted`` (default: raised); if it returns, the search goes on without it.
    """
    images, others = [], []
    for parent, _, names in os.walk(folder, onerror=on_unlisted):
        for name in names:  # everything but folders and links to them
            path = Path(parent, name)
            suffix = path.suffix.lower()
            if suffix in IMG_EXTENSIONS and path.exists():  # not a dangling link
                images.append(path)
            elif suffix in OTHER_IMAGE_EXTENSIONS:
                others.append(path)
    return sorted(images), sorted(others)
