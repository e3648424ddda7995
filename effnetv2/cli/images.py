"""Image inputs of the command line: find the files, decode and batch them, skip (and report) the ones that fail."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional, TextIO, Union

import torch
from PIL import UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm import tqdm

from effnetv2.cli import CLIError
from effnetv2.cli.paths import encode_path
from effnetv2.data.images import ImageTooLargeError, LargeImageWarning, NotRegularFileError, open_image
from effnetv2.data.tar_images import IMAGE_EXTENSIONS, TarFormatError, TarMember, index_tar
from effnetv2.distributed import is_first_process, launched_world_size


def find_images(paths: Sequence[Union[str, Path]]) -> list[Union[Path, TarMember]]:
    """The image files named by ``paths``, in order; folders are searched recursively and sorted; a ``.tar`` file
    gives its sample images, WebDataset style (:mod:`effnetv2.data.tar_images`).

    A file named explicitly is taken whatever its extension (a bad one is reported when decoded); inside a
    folder only torchvision's ``IMG_EXTENSIONS`` count, and files with other image extensions (``.gif``...) are
    counted in one warning on stderr. Non-regular files (FIFOs, sockets, devices) are kept, to be reported and
    skipped when decoded (:func:`~effnetv2.data.images.open_image` refuses them without blocking). A subfolder that
    cannot be listed is a warning; a missing path, a folder that cannot be listed or one without images is a
    :class:`CLIError`.
    """
    found: list[Union[Path, TarMember]] = []
    passed_over: list[Path] = []  # files with image extensions a folder search does not take
    for path in map(Path, paths):
        if path.is_dir():
            images, others = folder_images(path)
            passed_over += others
            if not images:
                looked_for = ", ".join(IMG_EXTENSIONS)
                tars = next(path.rglob("*.tar"), None)
                hint = f"; tar files are read when named: give them (e.g. {encode_path(tars)})" if tars else ""
                if others:
                    hint += f"; its {len(others)} {others_text(others)} files are not read from a folder: name them"
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
    if passed_over:
        warn(
            f"{len(passed_over)} {others_text(passed_over)} files in the folders given are not read (e.g. "
            f"{encode_path(passed_over[0])}): a folder gives the extensions {', '.join(IMG_EXTENSIONS)} only; name "
            "such files, or list them with --files-from, to read them (the first frame of an animation)"
        )
    return found


# Image formats Pillow (or a plugin) may read that torchvision's IMG_EXTENSIONS leave out of a folder search.
OTHER_IMAGE_EXTENSIONS = (".gif", ".apng", ".avif", ".heic", ".heif", ".jp2", ".jxl", ".ico", ".tga", ".psd")


def warn(message: str) -> None:
    """One warning line on stderr, as the command line writes them; under torchrun by the first process only
    (every process lists the same inputs, and would say the same)."""
    if is_first_process():
        tqdm.write(f"effnetv2: warning: {message}", file=sys.stderr)


def others_text(files: Sequence[Path]) -> str:
    return "/".join(sorted({f.suffix.lower() for f in files}))


def folder_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """The files of ``folder`` and its subfolders (symbolic links to folders not followed, as ``Path.rglob``)
    with an ``IMG_EXTENSIONS`` extension, sorted, and those with an :data:`OTHER_IMAGE_EXTENSIONS` one.

    A folder that cannot be listed is a :class:`CLIError` (``folder`` itself) or a warning (a subfolder).
    """

    def unlisted(error: OSError) -> None:
        reason = error.strerror or str(error)
        if os.fspath(error.filename) == os.fspath(folder):
            raise CLIError(f"{encode_path(folder)}: cannot list this folder ({reason})")
        warn(f"{encode_path(error.filename)}: cannot list this folder ({reason}); the images in it are not read")

    images, others = [], []
    for parent, _, names in os.walk(folder, onerror=unlisted):
        for name in names:  # everything but folders and links to them
            path = Path(parent, name)
            suffix = path.suffix.lower()
            if suffix in IMG_EXTENSIONS and path.exists():  # not a dangling link
                images.append(path)
            elif suffix in OTHER_IMAGE_EXTENSIONS:
                others.append(path)
    return sorted(images), sorted(others)


COMPRESSED_TARS = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")


def refuse_compressed_tar(path: Path) -> None:
    raise CLIError(
        f"{encode_path(path)}: a compressed tar file: decompress it to a .tar first (images inside are read "
        "by offset, which a compressed stream does not allow)"
    )


def images_in_tar(path: Path) -> list[TarMember]:
    """The sample images of a tar file; its image members that cannot be read (links) are one warning."""
    try:
        index = index_tar(path)
    except (TarFormatError, OSError) as e:
        raise CLIError(f"{encode_path(path)}: {e}") from None
    unread = ""
    if index.unread:
        more = f" (and {len(index.unread) - 1} more)" if len(index.unread) > 1 else ""
        unread = f"{len(index.unread)} image members are links, not read: {encode_path(index.unread[0])}{more}"
    if not index.images:
        looked_for = ", ".join(IMAGE_EXTENSIONS)
        unread_text = f"; {unread}" if unread else ""
        raise CLIError(f"{encode_path(path)}: no images in this tar file (looked for {looked_for}){unread_text}")
    if unread:
        warn(f"{encode_path(path)}: {unread}")
    return index.images


MAX_LIST_LINE = 4096  # bytes per --files-from line: Linux's PATH_MAX, the longest path a file can be opened by


def listed_paths(stream: BinaryIO, name: str) -> Iterator[Path]:
    """The paths listed in ``stream``, one per line, read line by line: a line longer than
    :data:`MAX_LIST_LINE` bytes or holding a NUL byte (binary input, ``/dev/zero``) is a :class:`CLIError` naming
    the list and the line, before more of it is read."""
    where = f"--files-from {encode_path(name)}"
    for number, line in enumerate(iter(lambda: stream.readline(MAX_LIST_LINE + 1), b""), start=1):
        if b"\0" in line:
            raise CLIError(f"{where}: line {number} holds a NUL byte: binary data, not a list of paths (one per line)")
        if len(line) > MAX_LIST_LINE and not line.endswith(b"\n"):
            raise CLIError(
                f"{where}: line {number} is longer than {MAX_LIST_LINE} bytes, the longest path there can be: "
                "not a list of paths (one per line)?"
            )
        for part in line.splitlines():  # \n, \r\n and a lone \r all end a line
            if part.strip():
                yield Path(os.fsdecode(part))


def read_file_list(source: str) -> list[Union[Path, TarMember]]:
    """``--files-from``: the image files listed in ``source``, one per line (``-``: standard input).

    A listed ``.tar`` file gives its sample images: it is indexed here, so a missing or damaged one is an error, as
    on the command line. Lines are taken as they are (no escapes; bytes that are not UTF-8 kept as the file system
    gives them), blank lines skipped; a relative path is relative to the current folder. The list is read line by
    line, and a line longer than :data:`MAX_LIST_LINE` bytes or with a NUL byte is an error. Other entries are not
    looked at here: a missing or unreadable image is reported and skipped when read, as a bad image is, so a list
    of millions costs no stat calls. Under torchrun every process reads the list, so it must be a file, not ``-``.
    """
    if launched_world_size() > 1 and source == "-":  # a stray or malformed WORLD_SIZE: refused in one line first
        raise CLIError(
            "--files-from -: under torchrun every process would read standard input; write the list to a file and "
            "give --files-from FILE"
        )
    files: list[Union[Path, TarMember]] = []
    try:
        with contextlib.nullcontext(sys.stdin.buffer) if source == "-" else open(source, "rb") as stream:
            for path in listed_paths(stream, source):
                if path.name.lower().endswith(COMPRESSED_TARS):
                    refuse_compressed_tar(path)
                files.extend(images_in_tar(path) if path.suffix.lower() == ".tar" else [path])
    except OSError as e:
        raise CLIError(f"--files-from {encode_path(source)}: {e.strerror or e}") from None
    if not files:
        raise CLIError(f"--files-from {encode_path(source)}: no paths in it")
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
