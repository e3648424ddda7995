"""Reading checkpoint files without ever executing a pickle."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Union

import torch
from safetensors.torch import load_file
from torch import Tensor

from effnetv2.errors import CheckpointError

PathLike = Union[str, os.PathLike]

# torch's weights-only unpickler names the global a malicious or foreign pickle asks for.
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def _looks_like_safetensors(path: Path) -> bool:
    # A safetensors file starts with an 8-byte little-endian header length and then a JSON object.
    with open(path, "rb") as f:
        head = f.read(9)
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


def _text_file_note(path: Path) -> str:
    """``path`` is a text file, not a checkpoint: what kind, from its first bytes; "" for a binary file."""
    with open(path, "rb") as f:
        head = f.read(4096)
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


def _check_is_file(path: Path) -> None:
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", ".pth", ".bin", ".pt"))
        hint = f"the file inside it ({path / inside[0]})" if inside else "a checkpoint file"
        raise CheckpointError(
            f"{path}: is a folder, not a checkpoint file: pass {hint}, or create_model('local-dir:{path}') "
            "for a folder saved in timm's Hub format"
        )
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path}: is not a regular file (a FIFO, socket or device?): pass a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: is empty (0 bytes): not a checkpoint; was it written completely?")


def read_state_dict(path: PathLike, use_ema: bool = True) -> dict[str, Tensor]:
    """Read a ``.safetensors`` file, or a ``.pth``/``.bin`` with ``torch.load(weights_only=True)``.

    Training checkpoints (``{'state_dict': ...}``, ``{'model': ...}``, EMA weights when ``use_ema``) are
    unwrapped. Raises FileNotFoundError for a missing file and :class:`CheckpointError` for a folder, an empty
    file, a text file, one that is truncated or not a checkpoint, or a pickle that would need to run code.
    """
    path = Path(path)
    _check_is_file(path)
    try:
        if _looks_like_safetensors(path):
            obj: Any = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler fails on text or garbage with KeyError, IndexError, struct.error ...
        unsafe = _UNSAFE_GLOBAL.search(str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if unsafe:
            raise CheckpointError(
                f"{path}: refused to unpickle: it would import {unsafe.group(1)!r}, which could run code "
                "(torch.load weights_only=True allows only tensors and plain containers). Nothing from it was "
                "executed. If you trust the file, convert it to .safetensors in a sandbox and load that"
            ) from e
        text = _text_file_note(path)
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
