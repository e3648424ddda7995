"""Images inside tar files, WebDataset style: the samples of ``shard-000.tar`` are its files grouped by key (the
member name up to the first dot of its base name: ``a/b/x001.jpg`` and ``a/b/x001.cls`` are sample ``a/b/x001``),
and a sample's image is its first member with an image extension.

Members are indexed once (tar headers only: an uncompressed tar is read header to header, seeking over the data)
and then read by offset, so any image can be decoded on its own, in any DataLoader worker and in any order: what
sharded output, ``--resume`` and torchrun need (WebDataset's own reader streams a tar front to back). Compressed
tars cannot be read that way and are refused.
"""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

# WebDataset's usual image extensions, in the order a sample's image is chosen among them.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff")
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # WebDataset's key/extension split


@dataclass(frozen=True)
class TarMember:
    """One image inside a tar file: where its bytes are, and a path-like name ``TAR/MEMBER`` for output files."""

    tar: Path
    member: str
    offset: int  # of the data in the tar file
    size: int

    def __fspath__(self) -> str:
        return f"{os.fspath(self.tar)}/{self.member}"

    def __str__(self) -> str:
        return self.__fspath__()

    @property
    def key(self) -> str:
        return self.member.rsplit(".", 1)[0] if "." in self.member.rsplit("/", 1)[-1] else self.member

    def read_bytes(self) -> bytes:
        with open(self.tar, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise OSError(f"{self.tar}: truncated ({len(data)} of {self.size} bytes of {self.member})")
        return data


class TarFormatError(ValueError):
    """A tar file that cannot be indexed: compressed, damaged, or not a tar."""


def tar_images(path: Path) -> list[TarMember]:
    """The sample images of the tar file ``path``, in the tar's order (one per sample key)."""
    try:
        with tarfile.open(path, mode="r:") as tar:  # "r:": uncompressed only, no silent gunzip of the whole file
            members = [m for m in tar if m.isfile()]
    except tarfile.ReadError as e:
        raise TarFormatError(
            f"not an uncompressed tar file ({e}); WebDataset shards are plain .tar, decompress a .tar.gz first"
        ) from None
    chosen: dict[str, tuple[int, tarfile.TarInfo]] = {}
    for m in members:
        match = _KEY_EXT.match(m.name)
        if match is None or match.group(2).lower() not in IMAGE_EXTENSIONS:
            continue
        rank = IMAGE_EXTENSIONS.index(match.group(2).lower())
        key = match.group(1)
        if key not in chosen or rank < chosen[key][0]:
            chosen[key] = (rank, m)
    return [TarMember(path, m.name, m.offset_data, m.size) for _, m in chosen.values()]
