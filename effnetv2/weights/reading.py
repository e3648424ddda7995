"""Reading checkpoint files without ever executing a pickle, each through one open descriptor.

A file is opened once (:class:`PinnedFile`) and every read goes through that descriptor, so a file replaced under
the same name while it is read (a ``save_pretrained`` of the same folder) is never half old, half new; what was read
is remembered as a :class:`SourceFile`, whose :meth:`~SourceFile.sha256` later fingerprints exactly that version.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors.torch import load_file
from torch import Tensor

from effnetv2.errors import CheckpointError
from effnetv2.weights.release import sha256_of

PathLike = Union[str, os.PathLike]

# Where an open descriptor can be opened again by name: the kernel's magic links reach the very file (or folder)
# the descriptor holds, even after its name was replaced or removed. None: no such place (not Linux or macOS).
_FD_FOLDER = next((d for d in ("/proc/self/fd", "/dev/fd") if os.path.isdir(d)), None)


@dataclass(frozen=True)
class SourceFile:
    """A file a model was made from, as it was read: ``role`` (``'weights'`` or ``'config'``), its ``path``, and the
    identity of the version read (device, inode, size, modification time)."""

    role: str
    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, role: str, path: PathLike, st: os.stat_result) -> SourceFile:
        return cls(role, str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def sha256(self) -> str:
        """The sha256 of this version of the file; :class:`CheckpointError` when ``path`` was replaced or changed
        since the model was read from it (its hash would describe another model)."""
        try:
            with PinnedFile.open(self.path, self.role) as f:
                if f.identity() == self:
                    digest = sha256_of(Path(f.source))
                    if f.identity() == self:  # not written in place while it was hashed
                        return digest
        except FileNotFoundError:
            pass
        raise CheckpointError(
            f"{self.path}: replaced or changed after the model was read from it; run again once nothing writes it"
        )


def fingerprint(files: Sequence[SourceFile]) -> dict[str, Optional[str]]:
    """``weights_file``, ``weights_sha256``, ``config_file``, ``config_sha256`` of the files a model was made from
    (``model.source_files``); ``None`` for a role no file had. Several files of one role (pretrained weights, then
    a checkpoint over them) are listed in load order, joined by ``+``."""
    out: dict[str, Optional[str]] = {}
    for role in ("weights", "config"):
        of_role = [f for f in files if f.role == role]
        out[f"{role}_file"] = "+".join(f.path for f in of_role) or None
        out[f"{role}_sha256"] = "+".join(f.sha256() for f in of_role) or None
    return out


class PinnedFile:
    """A file opened once; :attr:`source` names that open file for readers that want a path (safetensors), and
    :attr:`path` is what messages name. Replacing or removing ``path`` afterwards changes nothing that is read."""

    def __init__(self, path: Path, fd: int, role: str) -> None:
        self.path, self.fd, self.role = path, fd, role

    @classmethod
    def open(cls, path: PathLike, role: str = "weights", dir_fd: Optional[int] = None) -> PinnedFile:
        """Open ``path`` (with ``dir_fd``: its name inside that open folder) for reading; a FIFO does not block.

        Raises the ``OSError`` of the open (``FileNotFoundError``...), ``IsADirectoryError`` for a folder.
        """
        path = Path(path)
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path.name if dir_fd is not None else path, flags, dir_fd=dir_fd)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.close(fd)
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        return cls(path, fd, role)

    @property
    def source(self) -> str:
        """A path that opens this very file (``/proc/self/fd/N``); its own path where the system has none."""
        return f"{_FD_FOLDER}/{self.fd}" if _FD_FOLDER else str(self.path)

    def stat(self) -> os.stat_result:
        return os.fstat(self.fd)

    def pread(self, size: int) -> bytes:
        """The first ``size`` bytes (fewer when the file is shorter)."""
        return os.pread(self.fd, size, 0)

    def read_bytes(self) -> bytes:
        chunks, offset = [], 0
        while chunk := os.pread(self.fd, 1 << 20, offset):
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def identity(self) -> SourceFile:
        return SourceFile.of(self.role, self.path, self.stat())

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PinnedFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# torch's weights-only unpickler names the global a malicious or foreign pickle asks for.
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def _looks_like_safetensors(f: PinnedFile) -> bool:
    # A safetensors file starts with an 8-byte little-endian header length and then a JSON object.
    head = f.pread(9)
    return len(head) == 9 and head[8:9] == b"{"


def _unwrap(obj: Any, path: Path, use_ema: bool) -> dict[str, Tensor]:
    """Find the state dict inside a training checkpoint, as timm's ``load_checkpoint`` does."""
    if isinstance(obj, dict):
        for key in (("state_dict_ema", "model_ema") if use_ema else ()) + ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: holds no state dict (found {type(obj).__name__}); is it a model checkpoint?")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: not a state dict of tensors (offending entries: {bad[:5]})")
    # Checkpoints saved from DistributedDataParallel prefix every key with 'module.'.
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _text_file_note(f: PinnedFile) -> str:
    """The file is a text file, not a checkpoint: what kind, from its first bytes; "" for a binary file."""
    path = f.path
    head = f.pread(4096)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:  # a multi-byte character cut at the 4096-byte boundary is still text
        text = head[: e.start].decode("utf-8") if e.start >= len(head) - 3 else None
    if text is None or "\x00" in text:
        return ""
    stripped = text.lstrip()
    if not stripped:
        return f"{path}: is a text file of only whitespace, not a checkpoint"
    if stripped.startswith("version https://git-lfs"):
        return f"{path}: is a text file, not a checkpoint: a Git LFS pointer (fetch the real file with `git lfs pull`)"
    if stripped[:15].lower().startswith(("<!doctype html", "<html")):
        return f"{path}: is a text file, not a checkpoint: an HTML page (a failed download?)"
    first = stripped.splitlines()[0][:60]
    return f"{path}: is a text file, not a checkpoint (it starts with {first!r})"


def _folder_error(path: Path) -> CheckpointError:
    inside: list[str] = []
    with contextlib.suppress(OSError):
        inside = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", ".pth", ".bin", ".pt"))
    hint = f"the file inside it ({path / inside[0]})" if inside else "a checkpoint file"
    return CheckpointError(
        f"{path}: is a folder, not a checkpoint file: pass {hint}, or create_model('local-dir:{path}') "
        "for a folder saved in timm's Hub format"
    )


def open_weights_file(path: PathLike, dir_fd: Optional[int] = None) -> PinnedFile:
    """Open a checkpoint file once (with ``dir_fd``: ``path``'s name inside that open folder).

    Raises FileNotFoundError for a missing file and :class:`CheckpointError` for a folder, a FIFO or device, or an
    empty file.
    """
    path = Path(path)
    try:
        f = PinnedFile.open(path, "weights", dir_fd)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"checkpoint file not found: {path}") from None
    except IsADirectoryError:
        raise _folder_error(path) from None
    except OSError as e:
        if e.errno != errno.ENXIO:  # a socket cannot be opened: not a file either
            raise
        raise _not_regular(path) from None
    try:
        _check_regular(f)
    except CheckpointError:
        f.close()
        raise
    return f


def _not_regular(path: Path) -> CheckpointError:
    return CheckpointError(f"{path}: is not a regular file (a FIFO, socket or device?): pass a checkpoint file")


def _check_regular(f: PinnedFile) -> None:
    st = f.stat()
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(f.path)
    if st.st_size == 0:
        raise CheckpointError(f"{f.path}: is empty (0 bytes): not a checkpoint; was it written completely?")


def read_state_dict(path: PathLike, use_ema: bool = True) -> dict[str, Tensor]:
    """Read a ``.safetensors`` file, or a ``.pth``/``.bin`` with ``torch.load(weights_only=True)``.

    Training checkpoints (``{'state_dict': ...}``, ``{'model': ...}``, EMA weights when ``use_ema``) are
    unwrapped. Raises FileNotFoundError for a missing file and :class:`CheckpointError` for a folder, an empty
    file, a text file, one that is truncated or not a checkpoint, or a pickle that would need to run code.
    """
    with open_weights_file(path) as f:
        return read_pinned_state_dict(f, use_ema)


def read_pinned_state_dict(f: PinnedFile, use_ema: bool = True) -> dict[str, Tensor]:
    """:func:`read_state_dict` of an opened file: every byte from that one file."""
    path = f.path
    _check_regular(f)
    try:
        if _looks_like_safetensors(f):
            obj: Any = load_file(f.source, device="cpu")
        else:
            obj = torch.load(f.source, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler fails on text or garbage with KeyError, IndexError, struct.error ...
        unsafe = _UNSAFE_GLOBAL.search(str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if unsafe:
            raise CheckpointError(
                f"{path}: refused to unpickle: it would import {unsafe.group(1)!r}, which could run code "
                "(torch.load weights_only=True allows only tensors and plain containers). Nothing from it was "
                "executed. If you trust the file, convert it to .safetensors in a sandbox and load that"
            ) from e
        text = _text_file_note(f)
        if text:
            raise CheckpointError(text) from e
        if isinstance(e, pickle.UnpicklingError):
            reason = "the weights-only unpickler rejected it"
        else:
            reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise CheckpointError(
            f"{path}: cannot read checkpoint (corrupt, truncated or not a checkpoint file): {reason}"
        ) from e
    return _unwrap(obj, path, use_ema)
