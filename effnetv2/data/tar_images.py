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
    """A tar file that cannot be indexed: compressed, damaged, truncated, or not a tar."""


@dataclass
class TarIndex:
    """What :func:`index_tar` found: the sample images, and the image members it could not read (``name: why``:
    symbolic links, and hard links whose target is no earlier regular member)."""

    images: list[TarMember]
    unread: list[str]


# Magic numbers of the compressions tar files commonly get (``tar -z``, ``-j``, ``-J``, ``--zstd``).
_COMPRESSIONS = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))
_BLOCK = tarfile.BLOCKSIZE


def _compression(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(6)
    return next((name for magic, name in _COMPRESSIONS if head.startswith(magic)), "")


def _members(path: Path) -> list[tarfile.TarInfo]:
    """Every member header of ``path``, checked against the file's size: a member whose data would run past the
    end, or bytes after the last header that are neither a header nor the end-of-archive zeros, are errors naming
    the member (tarfile itself stops quietly at a damaged header and fails a bad size with a bare errno)."""
    size = path.stat().st_size
    members: list[tarfile.TarInfo] = []
    try:
        with tarfile.open(path, mode="r:") as tar:  # "r:": uncompressed only, no silent gunzip of the whole file
            while (member := tar.next()) is not None:
                end = member.offset_data + member.size
                if member.isreg() and not member.issparse() and end > size:
                    raise TarFormatError(
                        f"member {member.name!r}: its header says {member.size:,} bytes from offset "
                        f"{member.offset_data:,}, but the file ends at {size:,}: a truncated tar file, or a corrupt "
                        "or unsupported header"
                    )
                members.append(member)
            stopped_at = tar.offset
    except tarfile.ReadError as e:
        if not members:
            compression = _compression(path)
            if compression:
                raise TarFormatError(
                    f"a {compression}-compressed file: decompress it to a plain .tar first (WebDataset shards are "
                    "read by offset, which a compressed stream does not allow)"
                ) from None
            raise TarFormatError(f"not a tar file ({e})") from None
        raise TarFormatError(_damaged_after(members[-1], str(e))) from None
    with open(path, "rb") as f:
        f.seek(stopped_at)
        rest = f.read(_BLOCK)
    if rest.strip(b"\0"):  # tarfile stopped at a block that is neither a header nor the end-of-archive zeros
        why = "truncated inside a header" if len(rest) < _BLOCK else f"a corrupt header at offset {stopped_at:,}"
        raise TarFormatError(_damaged_after(members[-1] if members else None, why))
    return members


def _damaged_after(last: tarfile.TarInfo | None, why: str) -> str:
    where = f"after member {last.name!r}" if last is not None else "at its first header"
    return f"damaged {where} ({why}): a truncated or corrupt tar file; the members after it cannot be read"


def index_tar(path: Path) -> TarIndex:
    """The sample images of the tar file ``path``, in the tar's order (one per sample key), and the image members
    that are not read.

    A hard link reads as its target; of two members with the same name the later one counts (as ``tar -x`` leaves
    it); a sparse member is listed and fails when read (:meth:`TarMember.read_bytes`), so it is reported, not lost.
    Symbolic links, and hard links to no earlier regular member, are listed in :attr:`TarIndex.unread`.
    Raises :class:`TarFormatError` for a compressed, truncated or corrupt tar file.
    """
    files: dict[str, tarfile.TarInfo] = {}  # name -> the regular member holding its bytes, the last one wins
    chosen: dict[str, tuple[int, str]] = {}  # key -> (extension's rank, member name)
    unread: list[str] = []
    for m in _members(path):
        match = _KEY_EXT.match(m.name)
        is_image = match is not None and match.group(2).lower() in IMAGE_EXTENSIONS
        if m.islnk():
            target = files.get(m.linkname)
            if target is None:  # a link to a member that is not (yet) a regular file: nothing to read
                if is_image:
                    unread.append(f"{m.name}: a hard link to {m.linkname!r}, which is no earlier regular member")
                continue
            files[m.name] = target
        elif m.isfile():
            files[m.name] = m
        else:
            if is_image and m.issym():
                unread.append(f"{m.name}: a symbolic link (to {m.linkname!r}), which is not followed")
            continue
        if not is_image:
            continue
        rank = IMAGE_EXTENSIONS.index(match.group(2).lower())
        key = match.group(1)
        if key not in chosen or rank <= chosen[key][0]:
            chosen[key] = (rank, m.name)
    found = []
    for _, name in chosen.values():
        data = files[name]
        found.append(TarMember(path, name, data.offset_data, data.size, sparse=data.issparse()))
    return TarIndex(found, unread)


def tar_images(path: Path) -> list[TarMember]:
    """The sample images of the tar file ``path`` (:func:`index_tar`'s ``images``)."""
    return index_tar(path).images
