"""Finding pretrained weight files: a local file or folder, the Hugging Face Hub (its cache and offline mode), or
the original release file as a second source.

Where the weights come from, for a pretrained config ``cfg`` (timm's keys, plus ``hf_hub_revision``):

1. ``cfg['file']``: a local weights file, or a folder holding one (``local-dir:`` names set this).
2. ``cfg['source'] == 'url'``: only the original release file ``cfg['url']`` (torch.hub's cache, SHA-256 checked).
3. ``cfg['hf_hub_id']``: ``model.safetensors``, else ``pytorch_model.bin``, from the Hub or its cache. If that
   fails (no network and no cached copy, repo gone) the release file is tried next, unless the config asked for
   a particular Hub repo or revision (``hf-hub:`` names, ``hf_hub_revision``): those never fall back silently.

Unreachable Hub: before downloading, one HEAD request without retries (huggingface_hub's own client, so its proxy,
endpoint and ``HF_HUB_ETAG_TIMEOUT`` settings apply) tells whether the Hub answers. When it does not, only the
cache is looked at: recent huggingface_hub versions would otherwise retry with backoff for ~30 s before giving up.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

from effnetv2.errors import CheckpointError
from effnetv2.weights.release import release_cache_dir, release_file

HUB_FILES = ("model.safetensors", "pytorch_model.bin")
# What a local folder may hold, in order of preference (timm's order for its local-dir: names).
FOLDER_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")

CachePath = Optional[Union[str, os.PathLike]]


def split_revision(hub_id: str) -> tuple[str, Optional[str]]:
    """``'org/repo@rev'`` → ``('org/repo', 'rev')``, as timm's ``hf_split``."""
    repo_id, sep, revision = hub_id.partition("@")
    if "@" in revision:
        raise ValueError(f"a Hub id holds at most one '@' (before the revision), got {hub_id!r}")
    return repo_id, (revision if sep else None)


def hub_offline() -> bool:
    """True when huggingface_hub is in offline mode (``HF_HUB_OFFLINE=1``); release downloads obey it too."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def no_weights_message(folder: Path) -> str:
    return f"no weights file in {folder}: expected one of {', '.join(FOLDER_FILES)}"


def file_in_folder(folder: Path) -> Path:
    """The weights file a model folder holds (``model.safetensors`` first), or FileNotFoundError."""
    for name in FOLDER_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(no_weights_message(folder))


class PretrainedWeightsUnavailable(CheckpointError):
    """No source of pretrained weights worked (no network and no cached copy, or the Hub refused).

    ``failure`` says what was tried and why it failed; ``offline_advice`` how to make the weights available without
    a network (the command line puts its ``--checkpoint`` hint before both).
    """

    def __init__(self, failure: str, offline_advice: str) -> None:
        super().__init__(
            f"{failure}. To proceed without a network: pass checkpoint_path=<local weights file> or "
            f"pretrained_cfg_overlay=dict(file=<local file>), or {offline_advice}"
        )
        self.failure = failure
        self.offline_advice = offline_advice


def hub_unreachable(repo_id: str, filename: str, revision: Optional[str] = None) -> Optional[str]:
    """Why the Hub cannot be reached (``'ConnectError: ...'``), or None when it answers (any HTTP status).

    One HEAD request for ``filename`` without retries, through huggingface_hub's client and settings.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import HfHubHTTPError

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision))
    except HfHubHTTPError:  # the server answered (404, 401...): reachable; hf_hub_download reports the rest
        return None
    # Connection refused, DNS failure, timeout, TLS error: the exception types depend on huggingface_hub's version
    # (requests, httpx). huggingface_hub's own "file metadata" errors (not a Hub endpoint) count as unreachable too.
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no answer'}"
    return None


def hub_file(repo_id: str, revision: Optional[str] = None, cache_dir: CachePath = None) -> Path:
    """Download (or find in the cache) the repo's ``model.safetensors``, else its ``pytorch_model.bin``.

    Raises huggingface_hub's errors: ``LocalEntryNotFoundError`` when neither is reachable or cached; when the Hub
    does not answer (:func:`hub_unreachable`), the error's ``unreachable_because`` attribute says why.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    unreachable = None if hub_offline() else hub_unreachable(repo_id, HUB_FILES[0], revision)
    local_only = unreachable is not None

    def download(filename: str) -> Path:
        return Path(
            hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, local_files_only=local_only)
        )

    try:
        for filename in HUB_FILES[:-1]:
            try:
                return download(filename)
            except LocalEntryNotFoundError:
                # The Hub is unreachable (or offline mode is on): look for the next file in the cache only, rather
                # than wait through huggingface_hub's network retries a second time.
                local_only = True
            except EntryNotFoundError:  # the repo has no such file
                pass
        return download(HUB_FILES[-1])
    except LocalEntryNotFoundError as e:
        e.unreachable_because = unreachable
        raise


def _offline_advice(repo_id: str, cache_dir: CachePath) -> str:
    return (
        f"pre-populate the Hugging Face cache on a machine with a network (`hf download {repo_id}`, then copy "
        f"HF_HUB_CACHE), or put the original release file in {release_cache_dir(cache_dir)}."
    )


def pretrained_file(cfg: Mapping[str, Any], cache_dir: CachePath = None) -> Path:
    """The weights file for a pretrained config (see the module docstring for the order of sources).

    ``cache_dir`` overrides the Hugging Face cache and torch.hub's checkpoint folder, as timm's ``cache_dir``.
    Raises :class:`CheckpointError` saying what was tried and how to proceed when no source works.
    """
    if cfg.get("file"):
        path = Path(cfg["file"])
        return file_in_folder(path) if path.is_dir() else path
    url, source = cfg.get("url"), cfg.get("source")
    if source == "url":
        if not url:
            raise CheckpointError(f"source='url' was asked for, but {cfg.get('architecture')} has no release url")
        return release_file(url, cache_dir, offline=hub_offline())

    hub_id = cfg.get("hf_hub_id")
    if not hub_id and url:
        return release_file(url, cache_dir, offline=hub_offline())
    if not hub_id:
        raise CheckpointError(
            f"no pretrained weights are published for {cfg.get('architecture', 'this model')}; "
            "use pretrained=False, or pass checkpoint_path=<local file>"
        )

    from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, revision = split_revision(hub_id)
    revision = revision or cfg.get("hf_hub_revision")
    try:
        return hub_file(repo_id, revision, cache_dir)
    except (OSError, HfHubHTTPError) as e:  # LocalEntryNotFoundError and the HTTP errors are OSErrors
        hub_error = e
    if isinstance(hub_error, LocalEntryNotFoundError):
        because = getattr(hub_error, "unreachable_because", None)
        why = (
            "HF_HUB_OFFLINE is set"
            if hub_offline()
            else f"the Hub could not be reached{f': {because}' if because else ''}"
        )
        reason = f"no network access ({why}) and no cached copy in the Hugging Face cache"
    else:
        reason = f"{type(hub_error).__name__}: {str(hub_error).splitlines()[0]}"
    hub_failure = f"could not get pretrained weights for {repo_id} from the Hugging Face Hub: {reason}"

    if not url or source == "hf-hub" or revision:
        raise PretrainedWeightsUnavailable(hub_failure, _offline_advice(repo_id, cache_dir)) from hub_error
    try:
        path = release_file(url, cache_dir, offline=hub_offline())
    except CheckpointError as release_error:
        raise PretrainedWeightsUnavailable(
            f"{hub_failure}; nor from the original release file ({release_error})", _offline_advice(repo_id, cache_dir)
        ) from hub_error
    warnings.warn(f"{hub_failure}; using the original release file {path} instead", stacklevel=3)
    return path
