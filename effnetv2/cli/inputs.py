"""Input discovery: the image files a command reads, from its PATH arguments (files, folders, tar files) and
``--files-from`` lists. Decoding and batching them is :mod:`effnetv2.cli.batches`."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Optional, Union

from tqdm import tqdm

from effnetv2.cli import CLIError
from effnetv2.data.files import IMG_EXTENSIONS, find_image_files
from effnetv2.data.tar_images import IMAGE_EXTENSIONS, TarFormatError, TarMember, index_tar
from effnetv2.distributed import is_first_process, launched_world_size
from effnetv2.path_escape import encode_path


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


def warn(message: str) -> None:
    """One warning line on stderr, as the command line writes them; under torchrun by the first process only
    (every process lists the same inputs, and would say the same)."""
    if is_first_process():
        tqdm.write(f"effnetv2: warning: {message}", file=sys.stderr)


def others_text(files: Sequence[Path]) -> str:
    return "/".join(sorted({f.suffix.lower() for f in files}))


def folder_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """:func:`~effnetv2.data.files.find_image_files` of ``folder``: a folder that cannot be listed is a
    :class:`CLIError` (``folder`` itself) or a warning (a subfolder, whose images are then not read)."""

    def unlisted(error: OSError) -> None:
        reason = error.strerror or str(error)
        if os.fspath(error.filename) == os.fspath(folder):
            raise CLIError(f"{encode_path(folder)}: cannot list this folder ({reason})")
        warn(f"{encode_path(error.filename)}: cannot list this folder ({reason}); the images in it are not read")

    return find_image_files(folder, unlisted)


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


def input_images(args: argparse.Namespace, default: Optional[Path] = None) -> list[Path]:
    """The files named by ``args.paths`` (see :func:`find_images`), then those of ``--files-from``."""
    if not args.paths and not args.files_from:
        if default is None:
            raise CLIError("no images: give image files or folders, or --files-from LIST")
        return [default]
    files = find_images(args.paths) if args.paths else []
    return files + (read_file_list(args.files_from) if args.files_from else [])
