"""Reading checkpoint files without ever executing a pickle."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Union

import torch
from safetensors import SafetensorError
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


def read_state_dict(path: PathLike, use_ema: bool = True) -> dict[str, Tensor]:
    """Read a ``.safetensors`` file, or a ``.pth``/``.bin`` with ``torch.load(weights_only=True)``.

    Training checkpoints (``{'state_dict': ...}``, ``{'model': ...}``, EMA weights when ``use_ema``) are
    unwrapped. Raises FileNotFoundError for a missing file and :class:`CheckpointError` for one that is
    truncated, not a checkpoint, or a pickle that would need to run code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        if _looks_like_safetensors(path):
            obj: Any = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _UNSAFE_GLOBAL.search(str(e))
        if unsafe:
            raise CheckpointError(
                f"{path}: refused to unpickle: it would import {unsafe.group(1)!r}, which could run code "
                "(torch.load weights_only=True allows only tensors and plain containers). Nothing from it was "
                "executed. If you trust the file, convert it to .safetensors in a sandbox and load that"
            ) from e
        raise CheckpointError(
            f"{path}: cannot read checkpoint (corrupt, truncated or not a checkpoint file): the weights-only "
            "unpickler rejected it"
        ) from e
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read checkpoint (truncated or not a checkpoint file): {e}") from e
    return _unwrap(obj, path, use_ema)
