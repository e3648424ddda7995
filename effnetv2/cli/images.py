"""Image inputs of the command line: find the files, decode and batch them, skip (and report) the ones that fail."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TextIO, Union

import torch
from PIL import UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm import tqdm

from effnetv2.cli import CLIError
from effnetv2.cli.paths import encode_path
from effnetv2.data.images import ImageTooLargeError, LargeImageWarning, NotRegularFileError, open_image
from effnetv2.data.tar_images import IMAGE_EXTENSIONS, TarFormatError, TarMember, tar_images


def find_images(paths: Sequence[Union[str, Path]]) -> list[Union[Path, TarMember]]:
    """The image files named by ``paths``, in order; folders are searched recursively and sorted; a ``.tar`` file
    gives its sample images, WebDataset style (:mod:`effnetv2.data.tar_images`).

    A file named explicitly is taken whatever its extension (a bad one is reported when decoded); inside a
    folder only torchvision's ``IMG_EXTENSIONS`` count. Non-regular files (FIFOs, sockets, devices) are kept, to be
    reported and skipped when decoded (:func:`~effnetv2.data.images.open_image` refuses them without blocking).
    A missing path or a folder without images is a :class:`CLIError`.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            images = sorted(
                p for p in path.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.exists() and not p.is_dir()
            )
            if not images:
                looked_for = ", ".join(IMG_EXTENSIONS)
                tars = next(path.rglob("*.tar"), None)
                hint = f"; tar files are read when named: give them (e.g. {encode_path(tars)})" if tars else ""
                raise CLIError(f"{encode_path(path)}: no images in this folder (looked for {looked_for}){hint}")
            found.extend(images)
        elif path.suffix.lower() == ".tar" and path.is_file():
            found.extend(images_in_tar(path))
        elif path.name.lower().endswith(COMPRESSED_TARS) and path.is_file():
            refuse_compressed_tar(path)
        elif path.exists():
            found.append(path)
        else:
            raise CLIError(f"{encode_path(path)}: no such file or folder")
    return found


COMPRESSED_TARS = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")


def refuse_compressed_tar(path: Path) -> None:
    raise CLIError(
        f"{encode_path(path)}: a compressed tar file: decompress it to a .tar first (images inside are read "
        "by offset, which a compressed stream does not allow)"
    )


def images_in_tar(path: Path) -> list[TarMember]:
    try:
        images = tar_images(path)
    except (TarFormatError, OSError) as e:
        raise CLIError(f"{encode_path(path)}: {e}") from None
    if not images:
        raise CLIError(f"{encode_path(path)}: no images in this tar file (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return images


def read_file_list(source: str) -> list[Union[Path, TarMember]]:
    """``--files-from``: the image files listed in ``source``, one per line (``-``: standard input).

    A listed ``.tar`` file gives its sample images: it is indexed here, so a missing or damaged one is an error, as
    on the command line. Lines are taken as they are (no escapes; bytes that are not UTF-8 kept as the file system
    gives them), blank lines skipped; a relative path is relative to the current folder. Other entries are not
    looked at here: a missing or unreadable image is reported and skipped when read, as a bad image is, so a list of
    millions costs no stat calls. Under torchrun every process reads the list, so it must be a file, not ``-``.
    """
    if source == "-" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CLIError(
            "--files-from -: under torchrun every process would read standard input; write the list to a file and "
            "give --files-from FILE"
        )
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as e:
        raise CLIError(f"--files-from {encode_path(source)}: {e.strerror or e}") from None
    listed = [Path(os.fsdecode(line)) for line in data.splitlines() if line.strip()]
    if not listed:
        raise CLIError(f"--files-from {encode_path(source)}: no paths in it")
    files: list[Union[Path, TarMember]] = []
    for path in listed:
        if path.name.lower().endswith(COMPRESSED_TARS):
            refuse_compressed_tar(path)
        files.extend(images_in_tar(path) if path.suffix.lower() == ".tar" else [path])
    return files


def add_input_options(parser: argparse.ArgumentParser, default: str = "") -> None:
    """The images to read: PATH arguments and/or ``--files-from LIST``."""
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="image files and/or folders (searched recursively)" + (f"; default: {default}" if default else ""),
    )
    parser.add_argument(
        "--files-from",
        metavar="LIST",
        help="also read the image files listed in LIST, one path per line ('-': standard input, not under "
        "torchrun); a missing image is reported and skipped; a listed .tar file gives its images and must be readable",
    )


def input_images(args: argparse.Namespace, default: Optional[Path] = None) -> list[Path]:
    """The files named by ``args.paths`` (see :func:`find_images`), then those of ``--files-from``."""
    if not args.paths and not args.files_from:
        if default is None:
            raise CLIError("no images: give image files or folders, or --files-from LIST")
        return [default]
    files = find_images(args.paths) if args.paths else []
    return files + (read_file_list(args.files_from) if args.files_from else [])


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
            except UnidentifiedImageError:
                image, error = None, "not an image, or in a format Pillow cannot read"
            except (NotRegularFileError, ImageTooLargeError) as e:  # messages written for this line
                image, error = None, str(e)
            # Decoders raise many types (OSError, SyntaxError, ValueError...): any is a bad file.
            except Exception as e:
                image, error = None, f"{type(e).__name__}: {e}"
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
