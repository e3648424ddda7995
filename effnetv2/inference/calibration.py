"""Calibration images for int8, read one way for every caller, and which of them are held out to check the result.

:func:`calibration_images` takes a normalised ``(N, C, H, W)`` batch, a ``DataLoader`` (or any iterable of image
batches or ``(images, targets)`` pairs), a folder or image file, or a list of image files; files are read sorted
through the model's eval transform, at most :data:`DEFAULT_CALIBRATION_IMAGES` unless told otherwise, and an
unreadable one is skipped and reported (a warning, or the caller's ``on_skip``), never fatal while 2 remain.
Both int8 paths (PyTorch's and ONNX Runtime's) and the command line read calibration images here.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from effnetv2.data.files import IMG_EXTENSIONS, find_image_files
from effnetv2.defaults import DEFAULT_CALIBRATION_IMAGES

Calibration = Union[Tensor, Iterable[Any], str, os.PathLike, Sequence[Path]]

HOLDOUT_EVERY = 4  # every 4th calibration image checks the result instead of calibrating (when there are >= 8)


def split_holdout(images: Tensor) -> tuple[Tensor, Tensor]:
    """(calibrate, check) of a calibration batch: every 4th image checks when there are 8 or more; with fewer, none
    can be spared and all do both (the check is in-sample, and the reports say so)."""
    if images.shape[0] < 2 * HOLDOUT_EVERY:
        return images, images
    keep = torch.ones(images.shape[0], dtype=torch.bool)
    keep[::HOLDOUT_EVERY] = False
    return images[keep], images[::HOLDOUT_EVERY]


def _warn_skipped(path: Path, error: Exception) -> None:
    warnings.warn(f"calibration: skipped {path}: {error}", stacklevel=4)


def folder_files(path: Path) -> list[Path]:
    """The image files of a folder, recursively and sorted (or the one file ``path`` names)."""
    if not path.exists():
        raise FileNotFoundError(f"calibration: {path}: no such file or folder")
    files = [path] if path.is_file() else find_image_files(path)[0]
    if not files:
        raise ValueError(f"calibration: no images in {path} (looked for {', '.join(IMG_EXTENSIONS)})")
    return files


def read_files(
    files: Sequence[Path],
    model: nn.Module,
    img_size: Optional[int] = None,
    on_skip: Callable[[Path, Exception], None] = _warn_skipped,
) -> Tensor:
    """``files`` through the model's eval transform (its test size, or ``img_size``); unreadable ones skipped."""
    from effnetv2.data import create_transform, resolve_model_data_config
    from effnetv2.data.images import open_image

    args = {"img_size": img_size} if img_size else None
    config = resolve_model_data_config(model, args=args, use_test_size=True)  # as predict/validate read images
    transform = create_transform(**config, is_training=False)
    images = []
    for file in files:
        try:
            images.append(transform(open_image(file)))
        except Exception as e:  # any decoder error: that image does not calibrate; the rest still can
            on_skip(Path(file), e)
    if len(images) < 2:
        raise ValueError(f"fewer than 2 readable calibration images (of {len(files)})")
    return torch.stack(images)


def _loader_images(batches: Iterable[Any], limit: int) -> Tensor:
    taken: list[Tensor] = []
    count = 0
    for batch in batches:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(images, Tensor):
            raise TypeError(
                f"calibration batches must be image tensors or (images, targets) pairs, got {type(images).__name__}"
            )
        taken.append(images if images.dim() == 4 else images.unsqueeze(0))
        count += taken[-1].shape[0]
        if count >= limit:
            break
    if not taken:
        raise ValueError("calibration: the loader gave no batches")
    return torch.cat(taken)[:limit]


def _is_file_list(calibration: Any) -> bool:
    return (
        isinstance(calibration, Sequence)
        and len(calibration) > 0
        and all(isinstance(f, (str, os.PathLike)) for f in calibration)
    )


def calibration_images(
    calibration: Calibration,
    model: nn.Module,
    limit: Optional[int] = None,
    img_size: Optional[int] = None,
    on_skip: Callable[[Path, Exception], None] = _warn_skipped,
) -> Tensor:
    """``calibration`` as one (N, C, H, W) float batch of at most ``limit`` images (see the module docstring).

    A tensor is taken as it is (normalised images as the model takes them; its first ``limit`` if given). Files
    and loaders are read up to ``limit`` images (default :data:`DEFAULT_CALIBRATION_IMAGES`): a folder, an image
    file or a list of files sorted, through the model's eval transform (its test size, or ``img_size``), each
    unreadable file passed to ``on_skip`` (default: a warning).
    """
    if limit is not None and limit < 2:
        raise ValueError(f"calibration: the limit must be 2 or more images, got {limit}")
    if isinstance(calibration, Tensor):
        images = calibration if limit is None else calibration[:limit]
    else:
        images = _read(calibration, model, limit or DEFAULT_CALIBRATION_IMAGES, img_size, on_skip)
    if images.dim() != 4 or images.shape[0] < 2:
        raise ValueError(f"calibration must hold 2 or more images (N, C, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"calibration images must be normalised float tensors, got {images.dtype}")
    if not images.isfinite().all():
        raise ValueError("calibration images hold NaN or infinite values")
    return images.detach().float().cpu()


def _read(
    calibration: Calibration,
    model: nn.Module,
    limit: int,
    img_size: Optional[int],
    on_skip: Callable[[Path, Exception], None],
) -> Tensor:
    if isinstance(calibration, (str, os.PathLike)):
        return read_files(folder_files(Path(calibration))[:limit], model, img_size, on_skip)
    if _is_file_list(calibration):
        return read_files([Path(f) for f in calibration][:limit], model, img_size, on_skip)
    if isinstance(calibration, Iterable):
        return _loader_images(calibration, limit)
    raise TypeError(
        "calibration must be an image batch (Tensor), a DataLoader of images, a folder path or a list of image "
        f"files, got {type(calibration).__name__}"
    )


__all__ = [
    "DEFAULT_CALIBRATION_IMAGES",
    "HOLDOUT_EVERY",
    "Calibration",
    "calibration_images",
    "folder_files",
    "read_files",
    "split_holdout",
]
