"""Output files of the command line, written atomically (:mod:`effnetv2.atomic`): a reader never sees a half-written
file, a crash leaves the previous output or none. Image paths are written escaped (:mod:`effnetv2.path_escape`)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import save_file
from torch import Tensor

from effnetv2.atomic import atomic_path
from effnetv2.cli import CLIError
from effnetv2.path_escape import encode_path


def check_output(path: Path, suffixes: Sequence[str]) -> Path:
    """Fail early (before any model is loaded) on an output path that cannot be written as asked."""
    if path.suffix.lower() not in suffixes:
        raise CLIError(
            f"{encode_path(path)}: unsupported output type {path.suffix or '(none)'!r}; use {' or '.join(suffixes)}"
        )
    if path.is_dir():
        raise CLIError(f"{encode_path(path)}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise CLIError(f"{encode_path(path.parent)}: output folder does not exist")
    return path


def save_safetensors(path: Path, tensors: dict[str, Tensor], paths: Sequence[str], **metadata: Any) -> None:
    """Write ``tensors`` to .safetensors, with the image ``paths`` (a JSON list) and ``metadata`` in its header."""
    header = {"paths": json.dumps([encode_path(p) for p in paths]), **{k: json.dumps(v) for k, v in metadata.items()}}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=header)


def paths_file(output: Path) -> Path:
    """Where the image paths of a ``.npy`` output go: ``emb.npy`` → ``emb.paths.txt``."""
    return output.with_suffix(".paths.txt")


def save_npy_with_paths(path: Path, array: np.ndarray, paths: Sequence[str]) -> None:
    """Write ``array`` to ``path`` (.npy) and the image ``paths``, one per line, to :func:`paths_file`.

    The pair is consistent at every instant, a crash included: ``FILE.npy`` only ever exists beside the
    ``FILE.paths.txt`` of its rows. Both files are written to temp files first; then the old ``FILE.npy`` is
    removed, ``FILE.paths.txt`` replaced, and ``FILE.npy`` moved in last. No ``FILE.npy`` means no complete output.
    """
    with atomic_path(path) as npy_tmp:
        with open(npy_tmp, "wb") as f:
            np.save(f, array)
        with atomic_path(paths_file(path)) as txt_tmp:
            txt_tmp.write_text("".join(f"{encode_path(p)}\n" for p in paths), encoding="utf-8")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # from here until the last rename there is no FILE.npy, never a mismatched one
        # paths_file(path) now holds the new paths; leaving the outer block moves FILE.npy in
