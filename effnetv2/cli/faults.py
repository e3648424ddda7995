"""The one place where an exception becomes the command line's message: one line on stderr and an exit status.

:func:`describe_fault` knows

- the command line's own :class:`~effnetv2.cli.CLIError` and the library's errors (:mod:`effnetv2.errors`, and any
  ``ValueError`` subclass defined in effnetv2): their message as it is, exit status 2;
- every ``OSError``, by its errno: the path it names (the output when it names none) and what to do. A path the
  user got wrong (no such file, a file where a folder should be, one that exists already) is exit status 2; a
  fault of the machine (a full disk, no permission, a read-only file system) is 1;
- the write failures that arrive in other clothes: safetensors' ``SafetensorError`` (``... (os error 28)``) and
  torch.save's ``RuntimeError: [enforce fail at inline_container.cc...] unexpected pos`` (the ``OSError`` behind it,
  when Python kept it, says which);
- ``KeyboardInterrupt``: silent, 130; a closed pipe (``effnetv2 predict DIR | head``): silent, 1; ``MemoryError``.

Anything else is a bug: it gets no message here, so its traceback reaches the user and the bug report.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from effnetv2.path_escape import encode_path

USAGE = 2  # the command, its options or its paths are wrong: the user can fix the command line
ENVIRONMENT = 1  # the machine failed the command (a full disk, no permission): the same command may work later
INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C

STDOUT = "standard output"  # what a fault is about when it names no file and the command writes no output file

PathText = Union[str, bytes, os.PathLike]


@dataclass(frozen=True)
class Fault:
    """What the command line says about an exception: ``message`` (one line, or None for silence) and its status."""

    message: Optional[str]
    status: int


# errno → (what went wrong, what to do, exit status); "{path}" is filled in where the fault names one
_PATH_MISTAKES = {
    errno.ENOENT: ("no such file or folder", "check the path", USAGE),
    errno.ENOTDIR: ("not a folder (it, or a folder on the way to it, is a file)", "check the path", USAGE),
    errno.EISDIR: ("is a folder", "give a file name", USAGE),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter path", USAGE),
    errno.ELOOP: ("too many levels of symbolic links", "fix the symbolic link", USAGE),
    errno.ENOTEMPTY: ("folder not empty", "remove it or choose another path", USAGE),
}
_MACHINE_FAULTS = {
    errno.ENOSPC: ("no space left on the device", "free some space (or write elsewhere) and run the command again"),
    errno.EDQUOT: ("disk quota exceeded", "free some space (or write elsewhere) and run the command again"),
    errno.EFBIG: ("file too large for this file system", "write it to another file system"),
    errno.EACCES: ("permission denied", "give this user access to it and its folder, or choose another path"),
    errno.EPERM: ("operation not permitted", "give this user access to it and its folder, or choose another path"),
    errno.EROFS: ("read-only file system", "write to a writable folder"),
    errno.EIO: ("input/output error", "check the disk or network mount, then run the command again"),
    errno.ETXTBSY: ("file busy", "wait for the program using it to finish, or choose another path"),
    errno.EBUSY: ("device or resource busy", "wait for the program using it to finish, or choose another path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) or use fewer --workers"),
    errno.ENFILE: ("too many open files in the system", "close other programs or use fewer --workers"),
    errno.ENOMEM: ("out of memory", "use a smaller --batch-size or --img-size, or fewer --workers"),
}
# faults of writing: a write that names no file is about the command's output
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO}

# effnetv2.atomic writes FILE through ".FILE.{pid}-{8 hex}.tmp" beside it: the user knows FILE
_ATOMIC_TEMP = re.compile(r"\.(?P<name>.+)\.\d+-[0-9a-f]{8}\.tmp")
# safetensors' Rust I/O errors: "... (os error 28)" (0.4 and later) or "Os { code: 28, ... }" (older)
_RUST_ERRNO = re.compile(r"\(os error (\d+)\)|Os \{ code: (\d+)")


def describe_fault(exc: BaseException, output: Optional[PathText] = None) -> Optional[Fault]:
    """The message and exit status for ``exc``; None for an exception that is a bug (let its traceback show).

    ``output``: the file or folder the command writes, named when a write fault names no file (safetensors and
    torch.save do not); None names :data:`STDOUT`.
    """
    from effnetv2.cli import CLIError

    if isinstance(exc, CLIError):
        return Fault(str(exc), USAGE)
    if isinstance(exc, KeyboardInterrupt):
        return Fault(None, INTERRUPTED)
    if isinstance(exc, BrokenPipeError):
        return Fault(None, ENVIRONMENT)  # the reader went away: nothing to tell it
    if isinstance(exc, OSError):
        return _os_fault(exc, output)
    if isinstance(exc, MemoryError):
        return Fault(f"out of memory; {_MACHINE_FAULTS[errno.ENOMEM][1]}", ENVIRONMENT)
    library = _library_fault(exc)
    if library is not None:
        return library
    return _write_fault(exc, output)


def _library_fault(exc: BaseException) -> Optional[Fault]:
    """effnetv2's own errors: messages written for the user, as they are."""
    from effnetv2.errors import CheckpointError, ExportError, UnknownModelError
    from effnetv2.install_check import TorchvisionMismatchError

    if isinstance(exc, TorchvisionMismatchError):
        return Fault(str(exc), ENVIRONMENT)  # the installed packages, not the command line, are at fault
    if isinstance(exc, ExportError):
        return Fault(str(exc), ENVIRONMENT)  # an export that failed or does not match: not the command line's fault
    if isinstance(exc, (CheckpointError, UnknownModelError)) or (
        isinstance(exc, ValueError) and type(exc).__module__.split(".")[0] == "effnetv2"
    ):
        return Fault(_one_line(str(exc)), USAGE)
    return None


def _write_fault(exc: BaseException, output: Optional[PathText]) -> Optional[Fault]:
    """A failed write reported as something else than an OSError: by safetensors, or by torch.save."""
    from safetensors import SafetensorError

    text = str(exc)
    if isinstance(exc, SafetensorError) and "serializ" in text.lower():  # not a read: those name their file
        match = _RUST_ERRNO.search(text)
        if match:
            code = int(match.group(1) or match.group(2))
            return _os_fault(OSError(code, os.strerror(code)), output)
        return _cannot_write(output, text)
    if isinstance(exc, RuntimeError) and "inline_container" in text:
        cause = exc.__cause__ or exc.__context__  # torch.save into a Python file: the file's own OSError
        if isinstance(cause, OSError):
            return _os_fault(cause, output)
        return _cannot_write(output, text.split("] ")[-1].strip(". ") or text)
    return None


def _cannot_write(output: Optional[PathText], detail: str) -> Fault:
    where = _shown(output) if output is not None else STDOUT
    return Fault(
        f"cannot write {where} ({_one_line(detail)}); check that its disk has free space and that this user may "
        "write there, then run the command again",
        ENVIRONMENT,
    )


def _os_fault(exc: OSError, output: Optional[PathText]) -> Fault:
    if isinstance(exc, BrokenPipeError):
        return Fault(None, ENVIRONMENT)
    code = exc.errno
    path = _named_path(exc)
    if path is None and code in _WRITE_ERRNOS:
        path = _shown(output) if output is not None else STDOUT
    if type(exc).__module__.split(".")[0] == "effnetv2":  # effnetv2's own (RunFolderWriteError): written for the user
        return Fault(_one_line(exc.strerror or str(exc)), USAGE if code in _PATH_MISTAKES else ENVIRONMENT)
    if code == errno.EEXIST:
        return Fault(_exists(exc, path), USAGE)
    if code in _PATH_MISTAKES:
        what, remedy, status = _PATH_MISTAKES[code]
    elif code in _MACHINE_FAULTS:
        (what, remedy), status = _MACHINE_FAULTS[code], ENVIRONMENT
    else:
        what, remedy, status = _one_line(exc.strerror or str(exc)), "", ENVIRONMENT
    subject = f"{path}: " if path else ""
    return Fault(f"{subject}{what}" + (f"; {remedy}" if remedy else ""), status)


def _exists(exc: OSError, path: Optional[str]) -> str:
    if path is None:
        return f"{_one_line(exc.strerror or str(exc))}; remove it or choose another path"
    filename = exc.filename
    if isinstance(filename, (str, bytes, os.PathLike)) and os.path.lexists(filename) and not os.path.isdir(filename):
        return f"{path}: is a file where a folder is needed; remove it or choose another path"
    return f"{path}: already exists; remove it or choose another path"


def _named_path(exc: OSError) -> Optional[str]:
    """The file the OSError is about, as the user named it (an atomic write's temp file → the file written)."""
    filename = exc.filename
    if not isinstance(filename, (str, bytes, os.PathLike)):
        return None  # none, or a file descriptor
    path = Path(os.fsdecode(filename))
    match = _ATOMIC_TEMP.fullmatch(path.name)
    if match:
        path = path.with_name(match.group("name"))
    return _shown(path)


def _shown(path: PathText) -> str:
    return encode_path(path)


def _one_line(text: str) -> str:
    """The first non-empty line (torch's messages carry a C++ backtrace after it)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), text.strip())
