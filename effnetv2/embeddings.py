"""Reading back what ``effnetv2 embed`` wrote: the embeddings, the image path of each row, and the skipped files.

Three formats, as ``embed -o`` names them:

- ``FILE.safetensors``: tensor ``embeddings`` (N, D), the paths (a JSON list) and the model under header metadata;
- ``FILE.npy``: the (N, D) array, the paths one per line in ``FILE.paths.txt``;
- a folder: ``shard-00000.safetensors``, ... each with its rows, paths, skipped files and sha256, and ``index.json``
  (written last, once every shard is there) listing them (:mod:`effnetv2.shard_format`).

Paths are stored escaped (:mod:`effnetv2.path_escape`) and given back as the file names they were. Every shard is
checked against the sha256 it and the index record, so a damaged or swapped file is an error, not wrong rows.

    emb = effnetv2.load_embeddings("emb/")            # a folder, or emb.safetensors / emb.npy
    emb.vectors.shape, emb.paths[0], emb.skipped      # (N, D) float32; row 0's image; files that were not read
    for part in effnetv2.iter_embeddings("emb/"):     # one shard at a time: folders larger than memory
        ...
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from effnetv2.path_escape import decode_path, encode_path
from effnetv2.shard_format import CHECKSUM_KEY, FORMAT, INDEX_FILE, RUN_FILE, shard_checksum

TENSOR = "embeddings"


@dataclass
class Embeddings:
    """Rows of ``effnetv2 embed`` output. ``vectors`` (N, D) float32; ``paths[i]`` the image of row ``i``;
    ``skipped`` the input files that could not be read (``None`` where the format does not record them: a single
    file); ``model`` the model name recorded (``None`` for ``.npy``); ``metadata`` all that the file or index
    records (``model``, ``checkpoint``, ``input_size``, ...)."""

    vectors: Tensor
    paths: list[str]
    skipped: Optional[list[str]] = None
    model: Optional[str] = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:  # not the rows and paths themselves: there may be millions
        skipped = "not recorded" if self.skipped is None else len(self.skipped)
        shape = " × ".join(map(str, self.vectors.shape))
        return f"Embeddings({shape}, model={self.model!r}, skipped={skipped})"


def _resume_hint(folder: Path) -> str:
    return f"run the same effnetv2 embed command again with -o {encode_path(folder)} --resume"


def _read_safetensors(path: Path, expected_sha256: Optional[str] = None) -> Embeddings:
    """One ``.safetensors`` of embed (a whole output or a shard); a shard's content is checked against its sha256
    (and against ``expected_sha256``, the index's record of it)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, ValueError, RuntimeError) as e:  # OSError (a missing file) stays itself
        raise ValueError(f"{encode_path(path)}: not a readable .safetensors file ({e})") from None
    try:
        meta = {k: json.loads(v) for k, v in header.items()}
    except ValueError:
        raise ValueError(f"{encode_path(path)}: header metadata is not effnetv2's (values are not JSON)") from None
    if "paths" not in meta:
        raise ValueError(f"{encode_path(path)}: has no 'paths' metadata: not written by effnetv2 embed")
    recorded = meta.get(CHECKSUM_KEY)
    if recorded is not None or expected_sha256 is not None:
        actual = shard_checksum(tensors, header)
        if actual != recorded or (expected_sha256 is not None and actual != expected_sha256):
            raise ValueError(f"{encode_path(path)}: damaged: its content does not match its recorded sha256")
    if meta.get("kind", "embed") != "embed" or (tensors and TENSOR not in tensors):
        raise ValueError(f"{encode_path(path)}: holds {', '.join(tensors)}, not embeddings (effnetv2 features?)")
    paths = [decode_path(p) for p in meta.pop("paths")]
    vectors = tensors.get(TENSOR, torch.empty(0, 0))  # a shard whose images were all skipped holds no tensor
    if len(vectors) != len(paths):
        raise ValueError(f"{encode_path(path)}: {len(vectors)} rows but {len(paths)} paths")
    skipped = [decode_path(p) for p in meta["skipped"]] if "skipped" in meta else None
    return Embeddings(vectors, paths, skipped, meta.get("model"), meta)


def _read_npy(path: Path) -> Embeddings:
    paths_file = path.with_suffix(".paths.txt")
    if not paths_file.is_file():
        raise FileNotFoundError(f"{encode_path(paths_file)}: missing: embed writes it beside {encode_path(path)}")
    try:
        vectors = torch.from_numpy(np.load(path, allow_pickle=False))
    except ValueError as e:
        raise ValueError(f"{encode_path(path)}: not a readable .npy file ({e})") from None
    lines = paths_file.read_text(encoding="utf-8").splitlines()
    if vectors.ndim != 2 or len(vectors) != len(lines):
        raise ValueError(
            f"{encode_path(path)}: {tuple(vectors.shape)} array for {len(lines)} paths in {encode_path(paths_file)}"
        )
    return Embeddings(vectors, [decode_path(p) for p in lines])


def _read_index(folder: Path) -> dict[str, Any]:
    """``index.json`` of a finished sharded run; clear errors for a folder that is not one, or not yet one."""
    index_file = folder / INDEX_FILE
    if not index_file.is_file():
        if (folder / RUN_FILE).is_file():
            written = len(list(folder.glob("shard-*.safetensors")))
            raise ValueError(
                f"{encode_path(folder)}: an unfinished effnetv2 embed run (no {INDEX_FILE}; {written} shard(s) "
                f"written so far): wait for it to finish, or {_resume_hint(folder)}"
            )
        raise ValueError(
            f"{encode_path(folder)}: not an effnetv2 embed output folder (no {INDEX_FILE}); give the folder of "
            "`effnetv2 embed -o FOLDER`, or its .safetensors/.npy file"
        )
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{encode_path(index_file)}: not valid JSON ({e})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ValueError(f"{encode_path(index_file)}: not an index of format {FORMAT}")
    if index.get("kind", "embed") != "embed":
        raise ValueError(f"{encode_path(folder)}: holds the output of effnetv2 {index['kind']}, not embeddings")
    return index


def _iter_folder(folder: Path) -> Iterator[Embeddings]:
    index = _read_index(folder)
    for entry in index["shards"]:
        path = folder / entry["file"]
        if not path.is_file():
            raise ValueError(f"{encode_path(path)}: missing, though {INDEX_FILE} lists it: {_resume_hint(folder)}")
        try:
            part = _read_safetensors(path, entry.get(CHECKSUM_KEY))
        except ValueError as e:
            raise ValueError(f"{e}; {_resume_hint(folder)} (it writes damaged shards again)") from None
        if len(part) != entry["count"]:
            raise ValueError(f"{encode_path(path)}: {len(part)} rows, {INDEX_FILE} says {entry['count']}")
        yield part


def iter_embeddings(path: Union[str, os.PathLike]) -> Iterator[Embeddings]:
    """The rows of embed's output at ``path``, one shard at a time (a single file: once), each checked, so that a
    folder larger than memory can be read. ``FileNotFoundError`` for a missing path; ``ValueError`` (saying what to
    do) for an unfinished sharded run, a damaged shard, or a file that is not embed's."""
    path = Path(path)
    if path.is_dir():
        yield from _iter_folder(path)
    elif not path.exists():
        raise FileNotFoundError(f"{encode_path(path)}: no such file or folder (give what `effnetv2 embed -o` named)")
    elif path.suffix.lower() == ".npy":
        yield _read_npy(path)
    elif path.suffix.lower() == ".safetensors":
        yield _read_safetensors(path)
    else:
        raise ValueError(f"{encode_path(path)}: not embed output: give a .safetensors or .npy file, or a folder")


def load_embeddings(path: Union[str, os.PathLike]) -> Embeddings:
    """All the rows of embed's output at ``path`` (a ``.safetensors`` or ``.npy`` file, or a sharded folder) in
    input order, with their image paths and (folders) the skipped files; see :func:`iter_embeddings` for errors."""
    path = Path(path)
    parts = list(iter_embeddings(path))
    if path.is_dir():
        index = _read_index(path)
        meta = {k: v for k, v in index.items() if k not in ("shards", "format", "skipped", "count")}
        skipped: Optional[list[str]] = [decode_path(p) for p in index.get("skipped", [])]
    else:
        meta, skipped = parts[0].metadata, parts[0].skipped
    return Embeddings(
        _concat([p.vectors for p in parts]), [q for p in parts for q in p.paths], skipped, meta.get("model"), meta
    )


def _concat(blocks: Sequence[Tensor]) -> Tensor:
    """Rows of every shard; shards with no rows (all their images skipped) hold no tensor and are left out."""
    kept = [b for b in blocks if b.numel()]
    return torch.cat(kept) if kept else torch.empty(0, 0)


__all__ = ["Embeddings", "iter_embeddings", "load_embeddings"]
