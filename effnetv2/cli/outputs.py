"""Output files of the command line, written atomically: a reader never sees a half-written file."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

from effnetv2.cli import CLIError


def check_output(path: Path, suffixes: Sequence[str]) -> Path:
    """Fail early (before any model is loaded) on an output path that cannot be written as asked."""
    if path.suffix.lower() not in suffixes:
        raise CLIError(f"{path}: unsupported output type {path.suffix or '(none)'!r}; use {' or '.join(suffixes)}")
    if path.is_dir():
        raise CLIError(f"{path}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise CLIError(f"{path.parent}: output folder does not exist")
    return path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``, moved onto it only when the ``with`` body finished without error."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_lines(path: Path, lines: Sequence[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def save_safetensors(path: Path, tensors: dict[str, Tensor], paths: Sequence[str], **metadata: Any) -> None:
    """Write ``tensors`` to .safetensors, with the image ``paths`` (a JSON list) and ``metadata`` in its header."""
    header = {"paths": json.dumps(list(paths)), **{k: json.dumps(v) for k, v in metadata.items()}}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=header)
