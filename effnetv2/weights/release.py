"""The original release files (GitHub): torch.hub's cache and downloader, with the SHA-256 prefix in the name checked.

timm's release files are named ``<name>-<first 8+ hex digits of their SHA-256>.pth``. A cached copy is verified
every time it is used (hashing ~200 MB takes well under a second), not only when it is downloaded.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional, Union
from urllib.parse import urlparse

import torch.hub

from effnetv2.errors import CheckpointError


def release_cache_dir(cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Where release files are cached: ``cache_dir`` if given, else torch's ``<torch.hub.get_dir()>/checkpoints``."""
    return Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"


def expected_hash_prefix(filename: str) -> Optional[str]:
    """The SHA-256 prefix a release file name promises (``...-3d90cb1e.pth`` → ``3d90cb1e``), as torch.hub reads it."""
    match = torch.hub.HASH_REGEX.search(filename)
    return match.group(1) if match else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_hash_prefix(path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``path``'s SHA-256 starts with the prefix in its name."""
    prefix = expected_hash_prefix(path.name)
    if not prefix:
        return
    actual = sha256_of(path)
    if not actual.startswith(prefix):
        raise CheckpointError(
            f"{path}: SHA-256 is {actual[: len(prefix)]}..., but the file name promises {prefix}...: the file is "
            "corrupt or not the released checkpoint. Delete it and run again to download a fresh copy."
        )


def release_file(
    url: str, cache_dir: Optional[Union[str, os.PathLike]] = None, offline: bool = False, progress: bool = True
) -> Path:
    """The release file at ``url``, from torch.hub's cache or downloaded into it, its SHA-256 prefix verified.

    ``offline=True`` (effnetv2 passes huggingface_hub's ``HF_HUB_OFFLINE``) never downloads: a file that is not
    cached raises :class:`CheckpointError`.
    """
    filename = os.path.basename(urlparse(url).path)
    cached = release_cache_dir(cache_dir) / filename
    if not cached.is_file():
        if offline:
            raise CheckpointError(
                f"{filename} is not in the cache ({cached.parent}) and HF_HUB_OFFLINE forbids downloads"
            )
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            # torch writes to a temp file beside the target, checks the hash prefix, then renames it into place.
            torch.hub.download_url_to_file(url, str(cached), expected_hash_prefix(filename), progress=progress)
        except (OSError, RuntimeError) as e:  # URLError is an OSError; a hash mismatch is a RuntimeError
            raise CheckpointError(f"could not download {url} to {cached}: {e}") from e
    verify_hash_prefix(cached)
    return cached
