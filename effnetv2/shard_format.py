"""The sharded output folder's format, shared by its writer (``embed``/``features``, :mod:`effnetv2.cli.shards`)
and its reader (:func:`effnetv2.load_embeddings`).

``OUT/run.json`` (the run's settings), ``OUT/shard-00000.safetensors``, ... and ``OUT/index.json`` (written last)
whose ``format`` is :data:`FORMAT`. Each shard carries the sha256 of its content under the metadata key
:data:`CHECKSUM_KEY` (:func:`shard_checksum`), repeated in the index.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import torch
from torch import Tensor

RUN_FILE = "run.json"
INDEX_FILE = "index.json"
FORMAT = "effnetv2-shards/1"
CHECKSUM_KEY = "sha256"  # a shard's metadata key for shard_checksum


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.safetensors"


def shard_checksum(tensors: Mapping[str, Tensor], header: Mapping[str, str]) -> str:
    """sha256 of a shard's content: its header metadata (all but :data:`CHECKSUM_KEY`), then each tensor's name,
    dtype, shape and bytes, in name order. Any byte changed in the file changes it (or makes the file unreadable)."""
    h = hashlib.sha256()
    for key in sorted(k for k in header if k != CHECKSUM_KEY):
        h.update(json.dumps([key, header[key]]).encode("utf-8") + b"\n")
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode("utf-8") + b"\n")
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()
