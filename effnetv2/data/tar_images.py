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
    sparse: bool = False  # GNU sparse member: its bytes are not stored in one piece, so it is not read

    def __fspath__(self) -> str:
        return f"{os.fspath(self.tar)}/{self.member}"

    def __str__(self) -> str:
        return self.__fspath__()

    @property
    def key(self) -> str:
        return self.member.rsplit(".", 1)[0] if "." in self.member.rsplit("/", 1)[-1] else self.member

    def read_bytes(self) -> bytes:
        if self.sparse:
            raise OSError(f"{self.member}: a sparse tar member, which is not read (write the tar without --sparse)")
        with open(self.tar, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise OSError(f"{self.tar}: truncated ({len(data)} of {self.size} bytes of {self.member})")
        return data


class TarFormatError(ValueError):
    """A tar file that cannot be indexed: compressed, damaged, or not a tar."""


def tar_images(path: Path) -> list[TarMember]:
    """The sample images of the tar file ``path``, in the tar's order (one per sample key).

    A hard link reads as its target; of two members with the same name the later one counts (as ``tar -x`` leaves
    it); a sparse member is listed and fails when read (:meth:`TarMember.read_bytes`), so it is reported, not lost.
    """
    try:
        with tarfile.open(path, mode="r:") as tar:  # "r:": uncompressed only, no silent gunzip of the whole file
            members = [m for m in tar if m.isfile() or m.islnk()]
    except tarfile.ReadError as e:
        raise TarFormatError(
            f"not an uncompressed tar file ({e}); WebDataset shards are plain .tar, decompress a .tar.gz first"
        ) from None
    files: dict[str, tarfile.TarInfo] = {}  # name -> the regular member holding its bytes, the last one wins
    chosen: dict[str, tuple[int, str]] = {}  # key -> (extension's rank, member name)
    for m in members:
        if m.islnk():
            target = files.get(m.linkname)
            if target is None:  # a link to a member that is not (yet) a regular file: nothing to read
                continue
            files[m.name] = target
        else:
            files[m.name] = m
        match = _KEY_EXT.match(m.name)
        if match is None or match.group(2).lower() not in IMAGE_EXTENSIONS:
            continue
        rank = IMAGE_EXTENSIONS.index(match.group(2).lower())
        key = match.group(1)
        if key not in chosen or rank <= chosen[key][0]:
            chosen[key] = (rank, m.name)
    found = []
    for _, name in chosen.values():
        data = files[name]
        found.append(TarMember(path, name, data.offset_data, data.size, sparse=data.issparse()))
    return found
