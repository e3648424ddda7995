"""Crash-safe writes: every file and folder the project writes goes through here.

- :func:`atomic_path` — a file appears whole or not at all: the body writes a temp file beside the target,
  which is flushed to disk and renamed over it (``os.replace``).
- :func:`atomic_folder` — a folder of files changes as one step: the body fills a temp folder beside the
  target, which is then swapped with it (Linux ``renameat2(RENAME_EXCHANGE)``), so a reader sees the old set
  of files or the new one, never a mix.

Temp names are ``.{name}.{pid}-{random}.tmp`` beside the target. They are removed on any exception; one left
by a process that was killed is removed by the next write of the same target (when that pid is gone).
Files get the usual mode, whatever mode the writer created them with (``tempfile.mkstemp`` and safetensors make
``0600`` files): ``0666`` less the umask (``0644`` under the usual ``022``), or the mode of the file replaced.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, os.PathLike]

_TMP_SUFFIX = ".tmp"
_TEMP_ID = re.compile(r"(\d+)-[0-9a-f]{8}")  # "{pid}-{random}" of _temp_name


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{_TMP_SUFFIX}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(path: PathLike) -> list[Path]:
    """Remove temp files/folders of earlier writes of ``path`` whose writing process no longer exists."""
    path = Path(path)
    removed = []
    try:
        siblings = list(path.parent.iterdir())
    except OSError:  # no such folder, or not readable: nothing this process could clean
        return removed
    prefix = f".{path.name}."
    for entry in siblings:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(_TMP_SUFFIX)):
            continue
        match = _TEMP_ID.fullmatch(name[len(prefix) : -len(_TMP_SUFFIX)])  # not another target's temp
        if match is None or pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


def _umask() -> int:
    """The process umask, read without changing it where the system tells it (Linux >= 4.7)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _usual_mode(path: Path, like: Optional[Path] = None) -> None:
    """Give the file ``path`` the mode of the file ``like`` it replaces, or else ``0666`` less the umask.

    Writers choose their own modes (safetensors' makes ``0600`` files); the result should not depend on that.
    """
    try:
        mode = stat.S_IMODE(like.stat().st_mode) if like is not None and like.is_file() else 0o666 & ~_umask()
    except OSError:
        mode = 0o666 & ~_umask()
    if stat.S_IMODE(path.stat().st_mode) != mode:
        os.chmod(path, mode)


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk; folders on systems that cannot are skipped."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        if path.is_dir():
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; when the block succeeds, move the file written there onto ``path``.

    On an exception (a full disk, an interrupt) the temp file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    remove_stale_temps(path)
    tmp = _temp_name(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"the write of {path} produced no file")
        _usual_mode(tmp, like=path)
        _fsync(tmp)  # the data reaches the disk before the rename makes it visible
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        _remove(tmp)


def write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode(encoding))


RENAME_EXCHANGE = 2  # <linux/fs.h>


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2). False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # kernel or file system without RENAME_EXCHANGE
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def _carry_over(old: Path, new: Path) -> None:
    """Give ``new`` the entries of ``old`` that the write did not produce (hard links: no data is copied)."""
    for entry in old.iterdir():
        target = new / entry.name
        if target.exists() or target.is_symlink() or entry.name.endswith(_TMP_SUFFIX):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, target, follow_symlinks=False)


def _link_or_copy(src: PathLike, dst: PathLike, *, follow_symlinks: bool = True) -> None:
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=follow_symlinks)


@contextlib.contextmanager
def atomic_folder(path: PathLike) -> Iterator[Path]:
    """Yield an empty temp folder beside ``path``; when the block succeeds, it replaces ``path`` as one step.

    Entries of an existing ``path`` that the block did not write are carried over (hard-linked), so the
    folder may hold other files. A reader sees either the old folder or the new one. Where the system cannot
    swap two folders atomically (not Linux, or a file system without ``RENAME_EXCHANGE``) the old folder is
    renamed aside and the new one into place: a reader may then find no folder for that instant, never a mix.
    On an exception the temp folder is removed and ``path`` is unchanged.
    """
    path = Path(os.path.abspath(path))  # "." and ".." have no name to put a temp name beside
    if path.is_symlink() and path.is_dir():
        path = Path(os.path.realpath(path))  # write the folder the link points to; keep the link
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = _temp_name(path)
    tmp.mkdir()
    try:
        yield tmp
        for entry in tmp.rglob("*"):
            if entry.is_file() and not entry.is_symlink():
                _usual_mode(entry)
                _fsync(entry)
        if path.is_dir():
            _carry_over(path, tmp)
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))  # the folder keeps its permissions
        _fsync(tmp)
        try:
            os.rename(tmp, path)  # no folder there yet (POSIX fails on a non-empty one, Windows on any)
        except OSError:
            if not _exchange(tmp, path):
                aside = _temp_name(path)
                os.rename(path, aside)
                try:
                    os.rename(tmp, path)
                except BaseException:
                    os.rename(aside, path)  # put the old folder back
                    raise
                tmp = aside
        _fsync(path.parent)
        with contextlib.suppress(OSError):
            if os.path.samefile(os.getcwd(), tmp):
                os.chdir(path)  # the process worked in the old folder: move it to the new one before removal
    finally:
        _remove(tmp)  # the new folder on an error, else the old one (swapped to the temp name)
