"""Decoding and batching a command's image files, and running the model over the batches: a file that fails is
reported on stderr and skipped, never the end of the run."""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TextIO, TypeVar, Union

import torch
from PIL import UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from effnetv2.data.images import ImageTooLargeError, LargeImageWarning, NotRegularFileError, open_image
from effnetv2.path_escape import encode_path

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # --amp's names

Output = Union[Tensor, list[Tensor]]


def failure_text(error: Exception) -> str:
    """Why an image file could not be used, for the line ``effnetv2: skipped PATH: ...`` (which names the path)."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image, or in a format Pillow cannot read"
    if isinstance(error, (NotRegularFileError, ImageTooLargeError)):  # messages written for this line
        return str(error)
    return f"{type(error).__name__}: {error}"


class ImageFiles(Dataset):
    """``(index, image tensor or None, error message, warning message)`` per file, so one bad file does not stop a
    run; warnings (an image above Pillow's bomb warning limit) travel with the sample out of a worker process."""

    def __init__(self, files: Sequence[Path], transform: Callable[..., Tensor]) -> None:
        self.files = list(files)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, Optional[Tensor], str, str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", LargeImageWarning)
            try:
                image, error = self.transform(open_image(self.files[index])), ""
            # Decoders raise many types (OSError, SyntaxError, ValueError...): any is a bad file.
            except Exception as e:
                image, error = None, failure_text(e)
        path = encode_path(self.files[index])  # the message's own path is not escaped for output
        warning = "; ".join(f"{path}: {w.message.detail}" for w in caught if isinstance(w.message, LargeImageWarning))
        return index, image, error, warning


@dataclass
class Batch:
    indices: list[int]  # positions in the file list of the images that decoded
    images: Optional[Tensor]  # (len(indices), C, H, W), None when no image of the batch decoded
    failures: list[tuple[int, str]]  # (position, reason) of those that did not
    warnings: list[str]  # about images of the batch, each naming its file


def collate(samples: list[tuple[int, Optional[Tensor], str, str]]) -> Batch:
    good = [(i, x) for i, x, _, _ in samples if x is not None]
    failures = [(i, error) for i, x, error, _ in samples if x is None]
    images = torch.stack([x for _, x in good]) if good else None
    return Batch([i for i, _ in good], images, failures, [w for *_, w in samples if w])


def progress_enabled(stream: TextIO) -> bool:
    """A progress bar only on a terminal: piped or redirected output stays clean."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class ImageRun:
    """Decode, transform and batch ``files`` with a DataLoader, showing a tqdm bar on a terminal.

    Iterating yields ``(paths, images)`` batches of the files that decoded; each file that did not is
    reported on stderr by path and recorded in :attr:`failed`. Warnings about decoded files (above Pillow's
    decompression-bomb warning limit) are reported on stderr as ``effnetv2: warning: PATH: ...``.
    ``batches`` (lists of positions in ``files``) replaces the consecutive batches of ``batch_size``.
    """

    def __init__(
        self,
        files: Sequence[Path],
        transform: Callable[..., Tensor],
        batch_size: int,
        workers: int,
        pin_memory: bool = False,
        batches: Optional[Sequence[Sequence[int]]] = None,
    ) -> None:
        self.files = list(files)
        self.transform = transform
        self.batch_size = batch_size
        if batches is None:
            batches = [range(i, min(i + batch_size, len(self.files))) for i in range(0, len(self.files), batch_size)]
        self.plan = list(batches)  # ranges stay ranges: the plan for millions of images stays small
        self.total = sum(map(len, self.plan))
        # One batch gains nothing from worker processes but pays for starting them.
        self.workers = workers if len(self.plan) > 1 else 0
        self.pin_memory = pin_memory
        self.failed: list[Path] = []

    def batches(self) -> Iterator[Batch]:
        """Every batch, including those in which no image decoded (``images`` None), after reporting its failures."""
        loader = DataLoader(
            ImageFiles(self.files, self.transform),
            batch_sampler=self.plan,
            num_workers=self.workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
        )
        with tqdm(total=self.total, unit="img", file=sys.stderr, disable=not progress_enabled(sys.stderr)) as bar:
            for batch in loader:
                for warning in batch.warnings:
                    tqdm.write(f"effnetv2: warning: {warning}", file=sys.stderr)
                for index, error in batch.failures:
                    self.failed.append(self.files[index])
                    tqdm.write(f"effnetv2: skipped {encode_path(self.files[index])}: {error}", file=sys.stderr)
                bar.update(len(batch.indices) + len(batch.failures))
                yield batch

    def __iter__(self) -> Iterator[tuple[list[Path], Tensor]]:
        for batch in self.batches():
            if batch.images is not None:
                yield [self.files[i] for i in batch.indices], batch.images


def strided_batches(count: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[range]:
    """Batches of the positions ``rank, rank + world_size, ...`` below ``count``: one process's share of the inputs."""
    mine = range(rank, count, world_size)
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


K = TypeVar("K")


def run_model(
    forward: Callable[[Tensor], Output],
    run: Iterable[tuple[K, Optional[Tensor]]],
    device: torch.device,
    amp: Optional[str],
) -> Iterator[tuple[K, Optional[Output]]]:
    """``forward`` over every ``(key, images)`` batch of ``run`` (an :class:`ImageRun`: key = the paths) on
    ``device``; outputs come back as float32 CPU tensors, with the key. A batch without images (None) passes
    through as ``(key, None)``."""
    autocast = torch.autocast(device.type, dtype=AMP_DTYPES[amp]) if amp else contextlib.nullcontext()
    warned = False
    with torch.inference_mode():
        for paths, images in run:
            if images is None:
                yield paths, None
                continue
            with autocast:
                out = forward(images.to(device, non_blocking=True))
            outputs = [o.float().cpu() for o in ([out] if isinstance(out, Tensor) else out)]
            if not warned and not all(torch.isfinite(o).all() for o in outputs):
                hint = " (float16 overflow? try --amp bf16)" if amp == "fp16" else ""
                tqdm.write(f"effnetv2: warning: the model produced NaN or infinite values{hint}", file=sys.stderr)
                warned = True
            yield paths, outputs[0] if isinstance(out, Tensor) else outputs


def exit_status(run: ImageRun) -> int:
    """1 when any input failed (each was reported as it happened), else 0."""
    return 1 if run.failed else 0
